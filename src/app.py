"""A local web page: draw a digit, read a page, compare runs.

    python -m src.app [--port 7860] [--host 127.0.0.1] [--model RUN] [--runs-dir runs] [--submissions submissions]

Served by Python's own http.server (threaded) with one page of plain HTML and JavaScript (src/app.html):
nothing to install, up in a second, and since the committed reader runs in NumPy the page needs neither
TensorFlow nor a trained run. Gradio was the alternative: it would add a large dependency tree for three
tabs that are a canvas, a file input and a table.

The page talks to four JSON endpoints:
    POST /api/draw        PNG of the canvas -> the digit, top 3, and the 28x28 image the reader saw
    POST /api/read?name=  a photo, scan or PDF -> text, JSON, annotated pages, a searchable PDF
    GET  /api/runs        the submissions registry, each row with its run's report plots
    GET  /report/RUN/X    a report plot (made on first request when the run has none)
Bad input is a JSON {"error": ...} with a 4xx status; the server goes on serving.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from src import export, page, registry
from src.errors import DigitsError, run_cli
from src.reader import NOT_A_DIGIT, normalize_digit
from src.recognize import Classify, load_classifier, read_file

PAGE = Path(__file__).with_name("app.html")
MAX_UPLOAD = 25 * 1024 * 1024  # bytes: a phone photo is 2-8 MB
MAX_APP_PAGES = 20  # longer documents: python -m src.ocr, which shows progress


# --- what each endpoint computes --------------------------------------------------------------------------


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def read_drawing(png: bytes, classify: Classify) -> dict:
    """The digit on a canvas (dark strokes on white, PNG): what the reader says and the 28x28 image it saw."""
    grey = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE) if png else None
    if grey is None:
        raise DigitsError("the drawing is not a PNG image")
    ink = 1 - grey.astype(np.float32) / 255
    if (ink > 0.5).sum() < 20:
        raise DigitsError("the canvas is empty: draw a digit")
    seen = normalize_digit(ink)
    probs = classify(seen[None])[0]
    order = np.argsort(probs[:10])[::-1][:3]
    return {
        "digit": None if probs.argmax() == NOT_A_DIGIT else int(order[0]),
        "top3": [[int(d), round(float(probs[d]), 4)] for d in order],
        "not_a_digit": round(float(probs[NOT_A_DIGIT]), 4) if len(probs) > NOT_A_DIGIT else 0.0,
        "seen": data_url(
            cv2.imencode(".png", cv2.resize(seen, (112, 112), interpolation=cv2.INTER_NEAREST))[1].tobytes(),
            "image/png",
        ),  # fmt: skip
    }


def read_upload(data: bytes, name: str, classify: Classify) -> dict:
    """A photo, scan or PDF read as src.ocr reads it: text, JSON pages, annotated PNGs, a searchable PDF."""
    if not data:
        raise DigitsError(f"{name}: empty file")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("upload.pdf" if name.lower().endswith(".pdf") else "upload")
        path.write_bytes(data)
        pages, pdf_pages, annotated = [], [], []
        try:
            for number, _, rgb, result in read_file(path, classify, max_pages=MAX_APP_PAGES):
                pages.append(export.page_json(number, result))
                pdf_pages.append(export.pdf_page(rgb, result.lines))
                small, _ = page.work_size(rgb)  # the annotated copy need not be full size on a screen
                scale = small.shape[1] / rgb.shape[1]
                annotated.append(data_url(export.annotated_png(small, scaled(result.lines, scale)), "image/png"))
        except DigitsError as error:
            raise DigitsError(str(error).replace(str(path), name)) from None
    text = "\n\n".join(export.page_text(p) for p in pages)
    return {"file": name, "text": text, "pages": pages, "annotated": annotated,
            "pdf": data_url(export.searchable_pdf(pdf_pages), "application/pdf")}  # fmt: skip


def scaled(lines, scale: float):
    """Copies of `lines` with boxes scaled by `scale` (for drawing on a smaller copy of the page)."""
    from dataclasses import replace

    return [replace(line, digits=[replace(d, box=tuple(int(round(v * scale)) for v in d.box)) for d in line.digits])
            for line in lines]  # fmt: skip


def runs_table(submissions: Path, runs_dir: Path) -> list[dict]:
    """The registry, newest first, each row with the run folder its submission came from (when it is here)."""
    rows = []
    for row in registry.latest(submissions / registry.INDEX_NAME):
        meta_path = (submissions / row["file"]).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        run = Path(meta["run"]).name if meta.get("run") and (runs_dir / Path(meta["run"]).name).is_dir() else ""
        shown = ("time", "file", "preset", "cv", "public_score", "private_score", "message")
        rows.append({key: row.get(key, "") for key in shown} | {"run": run})
    return rows


def report_png(runs_dir: Path, run: str, name: str, lock: threading.Lock) -> bytes:
    """A plot of a run's report, made the first time it is asked for (one at a time: matplotlib is not
    thread-safe, and the page asks for several plots at once)."""
    from src import diagnostics

    if name not in diagnostics.PNGS or Path(run).name != run or not (runs_dir / run).is_dir():
        raise DigitsError(f"no report plot {run}/{name}")
    out = runs_dir / run / "report"
    with lock:
        if not (out / name).is_file():
            diagnostics.make_report(runs_dir / run, out)
    return (out / name).read_bytes()


# --- the server -----------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """One request: route, answer JSON or bytes; a DigitsError becomes {"error": ...} and the server goes on."""

    classify: Classify
    runs_dir: Path
    submissions: Path
    report_lock: threading.Lock

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/":
            self.answer(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/api/runs":
            self.json(lambda: {"runs": runs_table(self.submissions, self.runs_dir)})
        elif len(parts) == 3 and parts[0] == "report":
            png = lambda: report_png(self.runs_dir, parts[1], parts[2], self.report_lock)  # noqa: E731
            self.guarded(lambda: self.answer(HTTPStatus.OK, png(), "image/png"))
        else:
            self.answer(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self.drain(min(length, 4 * MAX_UPLOAD))  # read what was sent, so the browser gets the answer
            self.close_connection = True
            size = f"the file is {length / 2**20:.1f} MB; the limit is {MAX_UPLOAD // 2**20} MB"
            return self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, size)
        body = self.rfile.read(length)
        if url.path == "/api/draw":
            self.json(lambda: timed(read_drawing, body, self.classify))
        elif url.path == "/api/read":
            name = parse_qs(url.query).get("name", ["upload"])[0]
            self.json(lambda: timed(read_upload, body, name, self.classify))
        else:
            self.error(HTTPStatus.NOT_FOUND, "not found")

    def drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 2**20))
            if not chunk:
                return
            length -= len(chunk)

    def json(self, compute) -> None:
        self.guarded(lambda: self.answer(HTTPStatus.OK, json.dumps(compute()).encode(), "application/json"))

    def guarded(self, respond) -> None:
        try:
            respond()
        except DigitsError as error:
            self.error(HTTPStatus.BAD_REQUEST, str(error))
        except Exception as error:  # a bug must not take the server down: say so on the page and in the log
            sys.stderr.write(f"[app] internal error on {self.path}: {type(error).__name__}: {error}\n")
            self.error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(error).__name__}): {error}")

    def error(self, status: HTTPStatus, message: str) -> None:
        self.answer(status, json.dumps({"error": message}).encode(), "application/json")

    def answer(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # one short line per request, on stderr
        sys.stderr.write(f"[app] {self.command} {self.path.split('?')[0]} {args[1] if len(args) > 1 else ''}\n")


def timed(compute, *args) -> dict:
    start = time.perf_counter()
    result = compute(*args)
    return {**result, "ms": round(1000 * (time.perf_counter() - start), 1)}


def make_server(host: str, port: int, classify: Classify, runs_dir: Path, submissions: Path) -> ThreadingHTTPServer:
    settings = {"classify": staticmethod(classify), "runs_dir": runs_dir, "submissions": submissions,
                "report_lock": threading.Lock()}  # fmt: skip
    handler = type("AppHandler", (Handler,), settings)  # one class per server: no state shared between servers
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise DigitsError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    parser.add_argument("--model", type=Path, help="a run folder or reader weights (default: the committed reader)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, load_classifier(args.model), args.runs_dir, args.submissions)
    print(f"serving on http://{args.host}:{server.server_address[1]}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
