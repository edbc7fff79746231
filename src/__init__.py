"""digits: a Kaggle Digit Recognizer submission kit (data -> augment -> model/train -> ensemble -> submit)."""
