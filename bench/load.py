"""A class on one server: N concurrent sessions on Predict and Inside the network against one alone.

Starts the dashboard (`streamlit run app.py`) on localhost with its own runs folder holding one
tiny run trained first with the CLI, then opens sessions: even ones on Predict, odd ones on Inside
the network (the "Where it looked" tab, Grad-CAM). Every session uses its own choices (model kind,
top-k or CAM class, a photo that changes with every request) and checks its own result after every
request, so a session that saw another's state counts as an error.

A request is one user interaction that makes the app rerun and finish rendering: a widget change
sent to the server, every message of the rerun until the script run ends, and the images of the
render fetched over HTTP as a browser would. Phases: one session alone, then N at once (each
after an untimed warm-up that opens its page and makes its choices). Prints requests per second,
p50/p95 latency and errors per phase and the throughput ratio N / 1 with its target (>= 0.7,
issue 20), or `--json`.

Client: Streamlit's own websocket protocol (streamlit.proto BackMsg / ForwardMsg over
ws://127.0.0.1:PORT/_stcore/stream), not Playwright. Decided by measuring on this 2-core machine
(Playwright, one headless Chromium, N contexts reloading Predict until "Prediction took" shows):
1 tab, 3 loads: browser 3.2 CPU-s against the server's 3.6; 10 tabs, 30 loads: browser 57.8 CPU-s
against the server's 23.5, and 5.3 GB of browser memory. Ten tabs would measure Chromium competing
with the server for the two cores, not the server. The protocol client sends what a browser sends
(widget states by id, read from the server's own render) and costs milliseconds per request.

    python bench/load.py [--sessions 10] [--requests 6] [--port 8620] [--quick] [--json]

Localhost only; every loop is bounded (requests per session, a timeout per request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TARGET = 0.7  # aggregate throughput of N sessions over one session's (issue 20)
PHOTOS = {  # engine.samples.SAMPLE_PHOTOS, repeated here so the client never imports the app
    "chelsea": "Chelsea the cat",
    "coffee": "A cup of coffee",
    "astronaut": "Astronaut Eileen Collins",
    "rocket": "A rocket on the launch pad",
}
CAM_TAB = "🔥 Where it looked"
REQUEST_TIMEOUT = 300.0  # seconds; a request slower than this is an error


# ---- pure parts: statistics and the table ------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(sessions: int, latencies: list[float], errors: int, wall: float) -> dict:
    """One phase's figures: requests per second over its wall time, p50/p95 latency (s), errors."""
    done = len(latencies)
    return {
        "sessions": sessions,
        "requests": done + errors,
        "errors": errors,
        "seconds": round(wall, 2),
        "rps": round(done / wall, 3) if wall > 0 else 0.0,
        "p50": round(percentile(latencies, 50), 3),
        "p95": round(percentile(latencies, 95), 3),
    }


def ratio(one: dict, many: dict) -> float:
    """Aggregate throughput of the N-session phase over the one-session phase."""
    return round(many["rps"] / one["rps"], 3) if one["rps"] else 0.0


def table(phases: list[dict], result_ratio: float, target: float = TARGET) -> str:
    """The printed table: one row per phase, then the ratio and its target."""
    head = ("sessions", "requests", "errors", "req/s", "p50 s", "p95 s", "wall s")
    lines = ["  ".join(f"{h:>8}" for h in head)]
    for p in phases:
        lines.append(
            f"{p['sessions']:>8}  {p['requests']:>8}  {p['errors']:>8}  {p['rps']:>8.3f}  "
            f"{p['p50']:>8.3f}  {p['p95']:>8.3f}  {p['seconds']:>8.1f}"
        )
    verdict = "pass" if result_ratio >= target and all(p["errors"] == 0 for p in phases) else "FAIL"
    lines.append(
        f"throughput ratio {phases[-1]['sessions']} sessions / 1: {result_ratio:.2f} "
        f"(target >= {target}, 0 errors): {verdict}"
    )
    return "\n".join(lines)


# ---- the server ----------------------------------------------------------------------------------


def train_tiny_run(runs_dir: Path) -> Path:
    """One tiny trained run made with the CLI, so the Trained run choices have something to show."""
    out = runs_dir / "tiny"
    cmd = [PYTHON, "-m", "engine", "train", "shapes:per_class=12,classes=3,size=64", "--epochs", "2"]
    cmd += ["--image-size", "96", "--out", str(out), "--json"]
    subprocess.run(cmd, cwd=ROOT, env=server_env(runs_dir), check=True, capture_output=True, timeout=600)
    return out


def server_env(runs_dir: Path) -> dict:
    return {**os.environ, "CONVSCOPE_RUNS_DIR": str(runs_dir), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}


def start_server(runs_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:PORT; returns once /_stcore/health answers."""
    cmd = [PYTHON, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1"]
    cmd += ["--server.headless", "true"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=server_env(runs_dir), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"the server did not answer on port {port} within 120 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# ---- the protocol client -----------------------------------------------------------------------


@dataclass
class Render:
    """What one script run drew: elements as (type, widget key or '', text), exceptions, errors."""

    elements: list[tuple[str, str, str]] = field(default_factory=list)
    widgets: dict[str, tuple[str, object]] = field(default_factory=dict)  # key -> (id, proto)
    media: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def texts(self, kind: str) -> list[str]:
        return [text for t, _, text in self.elements if t == kind]


def key_of(widget_id: str) -> str:
    """A keyed widget's id ends with '-KEY' ('$$ID-<hash>-KEY'); '' for an unkeyed one."""
    return widget_id.split("-", 2)[2] if widget_id.startswith("$$ID-") and widget_id.count("-") >= 2 else ""


class Session:
    """One browser tab, spoken in Streamlit's protocol: rerun with widget states, read the render."""

    def __init__(self, port: int, page: str) -> None:
        self.port, self.page = port, page
        self.ws = None
        self.values: dict[str, tuple[str, object]] = {}  # key -> (value field, value) the user set
        self.last = Render()
        self.top_class: int | None = None

    async def __aenter__(self) -> Session:
        import websockets

        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{self.port}/_stcore/stream", subprotocols=["streamlit"], max_size=None, open_timeout=60
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def rerun(self, **changes: tuple[str, object]) -> Render:
        """Set widgets by key (value field, value), rerun the page, and wait until the run ends."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        self.values.update(changes)
        msg = BackMsg()
        msg.rerun_script.page_name = self.page
        for key, (kind, value) in self.values.items():
            if key not in self.last.widgets:
                continue
            state = msg.rerun_script.widget_states.widgets.add()
            state.id = self.last.widgets[key][0]
            if kind == "string_array_value":
                state.string_array_value.data.extend(value)
            elif kind == "double_array_value":
                state.double_array_value.data.extend(value)
            else:
                setattr(state, kind, value)
        await self.ws.send(msg.SerializeToString())
        render = await asyncio.wait_for(self._read_run(), REQUEST_TIMEOUT)
        await asyncio.gather(*(asyncio.to_thread(self._fetch, url) for url in render.media))
        self.last = render
        return render

    async def _read_run(self) -> Render:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        render = Render()
        while True:
            msg = ForwardMsg()
            msg.ParseFromString(await self.ws.recv())
            kind = msg.WhichOneof("type")
            if kind == "script_finished":
                if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    render = Render()  # st.rerun(): the next run draws the page
                    continue
                return render
            if kind == "delta":
                self._record(msg.delta, render)

    @staticmethod
    def _record(delta, render: Render) -> None:
        if delta.WhichOneof("type") == "add_block":
            block = delta.add_block
            if block.WhichOneof("type") == "tab_container" and block.tab_container.id:
                render.widgets[key_of(block.tab_container.id)] = (block.tab_container.id, block.tab_container)
            return
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        kind = element.WhichOneof("type")
        proto = getattr(element, kind)
        if kind == "exception":
            render.exceptions.append(f"{proto.type}: {proto.message}")
        if kind == "imgs":
            for img in proto.imgs:
                render.media.append(img.url)
                render.elements.append(("image", "", img.caption))
            return
        widget_id = getattr(proto, "id", "") if hasattr(proto, "id") else ""
        key = key_of(widget_id)
        if key:
            render.widgets[key] = (widget_id, proto)
        text = getattr(proto, "body", "") or getattr(proto, "label", "") or ""
        if kind == "plotly_chart":
            text = proto.spec
        render.elements.append((kind, key, text))

    def _fetch(self, url: str) -> str:
        """Read a media URL as the browser does; returns the file name it is served under, if any."""
        if not url.startswith("/"):
            return ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{url}", timeout=60) as r:
            r.read()
            disposition = r.headers.get("Content-Disposition", "")
        return disposition.split("filename=")[-1].strip('"') if "filename=" in disposition else ""

    async def download_name(self, key: str) -> str:
        """The file name a download button of the last render would save (it names the CAM's class)."""
        widget = self.last.widgets.get(key)
        return await asyncio.to_thread(self._fetch, widget[1].url) if widget else ""


# ---- what the sessions do and check ------------------------------------------------------------


@dataclass
class Student:
    """Session i's own choices: its page, model kind, and a per-page knob (top-k, CAM class)."""

    index: int

    @property
    def page(self) -> str:
        return "predict" if self.index % 2 == 0 else "inside"

    @property
    def trained(self) -> bool:
        return (self.index // 2) % 2 == 1  # sessions 2, 3, 6, 7: the tiny trained run

    @property
    def top_k(self) -> int:
        return 1 + self.index % 10

    def photo(self, request: int) -> str:
        return list(PHOTOS)[(self.index + request) % len(PHOTOS)]


async def prepare(session: Session, student: Student) -> None:
    """Untimed: open the page and make this student's standing choices."""
    await session.rerun()
    kind = ("string_value", "Trained run" if student.trained else "ImageNet backbone")
    if student.page == "predict":
        await session.rerun(predict_kind=kind)
        await session.rerun(top_k=("double_array_value", [float(student.top_k)]))
    else:
        await session.rerun(inside_kind=kind)
        await session.rerun(inside_tab=("string_value", CAM_TAB))
        await session.rerun(cam_methods=("string_array_value", ["Grad-CAM"]))


async def request(session: Session, student: Student, j: int) -> list[str]:
    """One timed interaction: a new photo (Inside: every other request a new CAM class instead)."""
    problems = []
    if student.page == "predict":
        photo = student.photo(j)
        render = await session.rerun(samples=("string_array_value", [PHOTOS[photo]]))
        problems += check_predict(render, student, photo)
    elif j % 2 == 0:
        photo = student.photo(j // 2)
        render = await session.rerun(inside_img_sample=("string_value", PHOTOS[photo]))
        problems += check_inside(render, student, photo)
        session.top_class = cam_class_index(await session.download_name("dl_gradcam"))
        if session.top_class is None:
            problems.append("inside: no Grad-CAM download")
    else:
        options = list(session.last.widgets["cam_class"][1].options)
        choice = options[1 + student.index % 3]  # the 2nd to 4th most likely class
        render = await session.rerun(cam_class=("string_value", choice))
        photo = student.photo(j // 2)
        problems += check_inside(render, student, photo)
        drawn = cam_class_index(await session.download_name("dl_gradcam"))
        if drawn is None or drawn == session.top_class:
            problems.append(f"inside: the map is not drawn for the chosen class {choice!r}")
        elif CLASS_SEEN.setdefault((student.trained, photo, choice), drawn) != drawn:
            problems.append(
                f"inside: class {choice!r} of {photo!r} drawn as index {drawn}, another session as "
                f"{CLASS_SEEN[(student.trained, photo, choice)]}"
            )
    return problems + [f"exception: {e}" for e in render.exceptions]


CLASS_SEEN: dict[tuple, int] = {}  # (trained, photo, class option) -> the class index its map was drawn for


def cam_class_index(file_name: str) -> int | None:
    """'gradcam-283.png' -> 283 (the Inside page names a map's download by method and class index)."""
    stem = file_name.rsplit(".", 1)[0]
    number = stem.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else None


def model_kind_ok(render: Render, student: Student) -> bool:
    """The trained run's name shows where this student picked it, and never elsewhere."""
    shows_run = any("tiny" in t for t in render.texts("markdown"))
    return shows_run == student.trained


def check_predict(render: Render, student: Student, photo: str) -> list[str]:
    heads = [h for h in render.texts("heading") if h.startswith(f"{PHOTOS[photo]}: ")]
    problems = [] if heads else [f"predict: no heading for {photo!r}: {render.texts('heading')}"]
    charts = render.texts("plotly_chart")
    if charts:
        bars = len(json.loads(charts[-1])["data"][0]["y"])
        k = min(student.top_k, 3) if student.trained else student.top_k  # the tiny run has 3 classes
        if bars != k:
            problems.append(f"predict: {bars} bars where this session asked for top {k}")
    else:
        problems.append("predict: no top-k chart")
    if not model_kind_ok(render, student):
        problems.append("predict: the other model kind is shown")
    return problems


def check_inside(render: Render, student: Student, photo: str) -> list[str]:
    problems = []
    if not any(c.startswith(f"{PHOTOS[photo]} (") for c in render.texts("image")):
        problems.append(f"inside: the image shown is not {photo!r}")
    if not any(c.startswith("Grad-CAM") for c in render.texts("image")):
        problems.append("inside: no Grad-CAM map drawn")
    if not model_kind_ok(render, student):
        problems.append("inside: the other model kind is shown")
    return problems


async def run_phase(port: int, sessions: int, requests: int, first: int = 0) -> tuple[dict, list[str]]:
    """N sessions at once: untimed preparation, then `requests` timed interactions each."""
    latencies: list[float] = []
    errors: list[str] = []
    ready = asyncio.Event()
    prepared = 0

    async def student_loop(student: Student) -> None:
        nonlocal prepared
        try:
            async with Session(port, student.page) as session:
                await prepare(session, student)
                prepared += 1
                if prepared == sessions:
                    ready.set()
                await ready.wait()  # everyone starts the timed part together
                for j in range(requests):
                    t0 = time.perf_counter()
                    try:
                        problems = await request(session, student, j)
                    except (TimeoutError, OSError, KeyError, IndexError) as exc:
                        problems = [f"{type(exc).__name__}: {exc}"]
                    if problems:
                        errors.extend(f"session {student.index}: {p}" for p in problems[:1])
                    else:
                        latencies.append(time.perf_counter() - t0)
        except Exception as exc:  # a session that could not even start counts all its requests as errors
            errors.extend([f"session {student.index}: {type(exc).__name__}: {exc}"] * requests)
            prepared += 1
            if prepared >= sessions:
                ready.set()

    task = asyncio.ensure_future(asyncio.gather(*(student_loop(Student(first + i)) for i in range(sessions))))
    await ready.wait()
    t0 = time.perf_counter()
    await task
    wall = time.perf_counter() - t0
    return summarize(sessions, latencies, len(errors), wall), errors


def measure(port: int, sessions: int, requests: int, warmup: int = 4) -> dict:
    """Warm the server's caches, then one session alone, then N at once, in this order."""
    if warmup:
        asyncio.run(run_phase(port, warmup, 1))  # both pages, both model kinds, traced functions
    one, errors_one = asyncio.run(run_phase(port, 1, requests * 2))
    many, errors_many = asyncio.run(run_phase(port, sessions, requests))
    return {"phases": [one, many], "ratio": ratio(one, many), "target": TARGET, "errors": errors_one + errors_many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--requests", type=int, default=6, help="timed requests per session (one alone: twice)")
    parser.add_argument("--port", type=int, default=8620)
    parser.add_argument("--warmup", type=int, default=4, help="sessions of the untimed warm-up (0: none)")
    parser.add_argument("--quick", action="store_true", help="4 sessions, 3 requests each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.requests = min(args.sessions, 4), 3

    work = Path(tempfile.mkdtemp(prefix="convscope-bench-load-"))
    try:
        if max(args.sessions, args.warmup) > 2:  # sessions 2, 3, 6, 7 pick the trained run
            train_tiny_run(work / "runs")
        server = start_server(work / "runs", args.port, work / "server.log")
        try:
            result = measure(args.port, args.sessions, args.requests, args.warmup)
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result["bench"] = "load"
    if args.json:
        print(json.dumps(result))
        return
    print(table(result["phases"], result["ratio"]))
    for e in result["errors"][:10]:
        print("error:", e)


if __name__ == "__main__":
    main()
