"""The HTTP application: nnInteractive's remote-session protocol (nninteractive-client >= 2.5.1, < 3) on FastAPI.

One model is loaded once; each client claims a lease and gets its own ``InteractiveSession`` (image, prompts,
target buffer) sharing that model. Predictions of all sessions are serialised by one lock (one GPU); a lease's
own requests by its lease lock. Arrays travel in the protocol's packed format, read and written with the
client package's own ``pack_array`` / ``unpack_array`` so both ends agree by construction. A prediction's reply
carries only the box that changed.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager
from typing import Callable, Optional

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nnInteractive.inference.remote import _protocol as P
from nnInteractive.inference.remote.serialization import pack_array, unpack_array

from nnunet_prompt.serve.interactions import (TEXT_PATH, InteractionRefused, bbox_to_xyz, capabilities_document,
                                              point_to_xyz, require, stroke_offset)
from nnunet_prompt.serve.leases import AtCapacity, Lease, LeaseGone, LeaseRegistry

log = logging.getLogger("nnunet_prompt.serve")


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str, headers: Optional[dict] = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _bad(detail: str) -> HTTPProblem:
    return HTTPProblem(400, detail)


def make_app(new_session: Callable[[], object], predictor, supported: dict, api_key: Optional[str] = None,
             max_sessions: int = 1, idle_timeout_s: float = 600.0, liveness_timeout_s: float = 60.0,
             undo: bool = True) -> FastAPI:
    """``new_session()``: a fresh ``InteractiveSession`` on the shared predictor."""
    registry = LeaseRegistry(new_session, max_sessions, idle_timeout_s, liveness_timeout_s)
    model_lock = threading.Lock()
    caps = capabilities_document(predictor, supported, undo, autozoom=True)
    trainer = predictor.trainer_name

    @asynccontextmanager
    async def lifespan(_app):
        async def reaper():
            while True:
                await asyncio.sleep(max(0.2, min(5.0, liveness_timeout_s / 4)))
                n = registry.sweep()
                if n:
                    log.info("reaped %d session(s)", n)
        task = asyncio.create_task(reaper())
        yield
        task.cancel()

    app = FastAPI(title="nnunet-prompt interactive server", lifespan=lifespan)
    app.state.registry = registry

    @app.exception_handler(HTTPProblem)
    async def _problem(_request, e: HTTPProblem):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request, e: Exception):  # the server keeps serving; the client sees what broke
        log.exception("request failed")
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise HTTPProblem(401, "Missing bearer token: this server was started with --api-key")
        if not hmac.compare_digest(header[len("Bearer "):].encode(), api_key.encode()):
            raise HTTPProblem(401, "Invalid bearer token")

    def lease_of(request: Request, kind: str = "active") -> Lease:
        token = request.headers.get(P.LEASE_HEADER)
        try:
            return {"active": registry.get, "seen": registry.heartbeat, "peek": registry.peek}[kind](token)
        except LeaseGone as e:
            raise HTTPProblem(410, str(e))

    def client(request: Request) -> Lease:
        """The key check and the lease of a real action, which every session endpoint starts with."""
        check_key(request)
        return lease_of(request)

    async def json_body(request: Request) -> dict:
        raw = await request.body()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _bad(f"the request body is not JSON: {e}")
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        return body

    async def array_body(request: Request, what: str):
        header = request.headers.get(P.META_HEADER)
        try:
            meta = json.loads(header) if header else {}
        except json.JSONDecodeError as e:
            raise _bad(f"Bad {P.META_HEADER} header (not JSON): {e}")
        if not isinstance(meta, dict):
            raise _bad(f"Bad {P.META_HEADER} header: a JSON object is needed")
        raw = await request.body()
        try:
            array = unpack_array(raw)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the client's malformed body
            raise _bad(f"the {what} body is not a packed array ({type(e).__name__}: {e})")
        return meta, array

    def flag(body: dict, key: str, default: bool) -> bool:
        v = body.get(key, default)
        if not isinstance(v, bool):
            raise _bad(f"'{key}' must be true or false, got {v!r}")
        return v

    async def in_session(lease: Lease, fn, predicts: bool):
        """Run fn(session) in a worker thread, under the lease lock (and the model lock when it predicts)."""
        def work():
            with lease.lock:
                try:
                    if predicts:
                        with model_lock:
                            return fn(lease.session)
                    return fn(lease.session)
                except (InteractionRefused, ValueError, IndexError) as e:
                    raise _bad(str(e))
                except RuntimeError as e:
                    if "set_image" in str(e):
                        raise HTTPProblem(409, "no image yet: call set_image first")
                    raise
        return await run_in_threadpool(work)

    def reply(lease: Lease, session, box) -> Response:
        """The protocol's prediction reply: ran_prediction, the changed box, and that box of the mask."""
        if box is None or lease.buffer is None:
            meta = {"ran_prediction": box is not None, "bbox": [list(b) for b in box] if box else None}
            return Response(b"", media_type=P.CONTENT_TYPE_OCTET_STREAM,
                            headers={P.META_HEADER: json.dumps(meta, separators=(",", ":"))})
        import blosc2
        values = session.mask_in(box).astype(lease.buffer[1], copy=False)
        meta = {"ran_prediction": True, "bbox": [[int(a), int(b)] for a, b in box]}
        headers = {P.META_HEADER: json.dumps(meta, separators=(",", ":"))}
        if session.last_network_ms is not None:  # the standard Server-Timing header: what a reply's time went to
            headers["Server-Timing"] = f"network;dur={session.last_network_ms:.1f}, session;dur={session.last_latency_ms:.1f}"
        return Response(pack_array(values, filters=[blosc2.Filter.NOFILTER]), media_type=P.CONTENT_TYPE_OCTET_STREAM,
                        headers=headers)

    def need_image_and_buffer(lease: Lease, session) -> tuple:
        if session._data is None:
            raise HTTPProblem(409, "no image yet: call set_image first")
        if lease.buffer is None:
            raise HTTPProblem(409, "no target buffer yet: call set_target_buffer after set_image")
        return session.image_shape

    # ------------------------------------------------------------------ lifecycle
    @app.get(P.PATH_HEALTHZ)
    def healthz() -> dict:
        return {"ok": True}

    @app.get(P.PATH_CAPABILITIES)
    def capabilities(request: Request) -> dict:
        check_key(request)
        token = request.headers.get(P.LEASE_HEADER)
        out = dict(caps)
        if token:
            try:
                out["do_autozoom"] = bool(registry.peek(token).session.grow)
            except LeaseGone:
                pass
        return out

    @app.post(P.PATH_CLAIM)
    def claim(request: Request) -> dict:
        check_key(request)
        try:
            token = registry.claim()
        except AtCapacity as e:
            raise HTTPProblem(503, str(e), {"Retry-After": "10"})
        return {"lease_token": token, "idle_timeout_seconds": registry.idle_timeout_s,
                "liveness_timeout_seconds": registry.liveness_timeout_s, "max_sessions": registry.max_sessions}

    @app.post(P.PATH_RELEASE)
    def release(request: Request) -> dict:
        check_key(request)
        return {"released": registry.release(request.headers.get(P.LEASE_HEADER))}

    @app.post(P.PATH_HEARTBEAT)
    def heartbeat(request: Request) -> dict:
        check_key(request)
        lease = lease_of(request, "seen")
        return {"remaining_seconds": registry.remaining_s(lease)}

    @app.get(P.PATH_LEASE_STATUS)
    def lease_status(request: Request) -> dict:
        check_key(request)
        lease = lease_of(request, "peek")
        return {"remaining_seconds": registry.remaining_s(lease), "idle_timeout_seconds": registry.idle_timeout_s}

    # ------------------------------------------------------------------ image and buffer
    @app.post(P.PATH_SET_IMAGE)
    async def set_image(request: Request) -> dict:
        lease = client(request)
        meta, image = await array_body(request, "image")
        if image.ndim != 4:
            raise _bad(f"the image must be 4D [channels, a0, a1, a2], got shape {list(image.shape)}")
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
            raise _bad(f"the image's dtype {image.dtype} is not numeric")
        props = meta.get("image_properties") or {}
        if not isinstance(props, dict):
            raise _bad("image_properties must be a JSON object")
        spacing = props.get("spacing")

        def do(session):
            if spacing is None:  # no geometry: take the image as lying on the model's own grid
                cm = session.predictor.configuration_manager
                s = list(cm.spacing) if len(cm.spacing) == 3 else [1.0, *cm.spacing]
            else:
                s = _spacing_of(spacing)
            session.set_image(image.astype(np.float32, copy=False), spacing=tuple(float(v) for v in s[::-1]))
            lease.buffer = None
            return list(image.shape)
        shape = await in_session(lease, do, predicts=False)
        return {"original_image_shape": shape}

    @app.post(P.PATH_SET_TARGET_BUFFER)
    async def set_target_buffer(request: Request) -> dict:
        lease = client(request)
        body = await json_body(request)
        shape, dtype = body.get("shape"), body.get("dtype")
        if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise _bad(f"shape must be 3 positive integers, got {shape!r}")
        try:
            dtype = np.dtype(str(dtype))
        except TypeError as e:
            raise _bad(f"invalid dtype {body.get('dtype')!r}: {e}")
        if dtype.kind not in "biuf":
            raise _bad(f"the target buffer's dtype {dtype} cannot hold a mask")

        def do(session):
            if session._data is None:
                raise HTTPProblem(409, "no image yet: call set_image first")
            if tuple(shape) != tuple(session.image_shape):
                raise _bad(f"the target buffer's shape {shape} differs from the image's {list(session.image_shape)}")
            lease.buffer = (tuple(shape), dtype)
            return {"ok": True}
        return await in_session(lease, do, predicts=False)

    @app.post(P.PATH_SET_DO_AUTOZOOM)
    async def set_do_autozoom(request: Request) -> dict:
        lease = client(request)
        on = flag(await json_body(request), "do_autozoom", True)

        def do(session):
            session.grow = on
            return {"do_autozoom": on}
        return await in_session(lease, do, predicts=False)

    @app.post(P.PATH_RESET_INTERACTIONS)
    async def reset_interactions(request: Request) -> dict:
        lease = client(request)
        return await in_session(lease, lambda s: (s.reset(), {"ok": True})[1], predicts=False)

    @app.post(P.PATH_UNDO)
    async def undo_(request: Request) -> Response:
        lease = client(request)
        if not undo:
            return reply(lease, None, None)

        def do(session):
            need_image_and_buffer(lease, session)
            if session._pending is None and not session._history:
                return reply(lease, session, None)
            return reply(lease, session, session.undo(return_mask=False) or None)
        return await in_session(lease, do, predicts=False)

    @app.post(P.PATH_PREDICT)
    async def predict(request: Request) -> Response:
        lease = client(request)
        await json_body(request)

        def do(session):
            need_image_and_buffer(lease, session)
            return reply(lease, session, session.predict(return_mask=False))
        return await in_session(lease, do, predicts=True)

    # ------------------------------------------------------------------ interactions
    @app.post(P.PATH_ADD_POINT)
    async def add_point(request: Request) -> Response:
        lease = client(request)
        body = await json_body(request)
        positive, run = flag(body, "include_interaction", True), flag(body, "run_prediction", True)
        require(supported, "points", trainer, flag(body, "override_capability_checks", False))

        def do(session):
            xyz = point_to_xyz(body.get("coordinates"), need_image_and_buffer(lease, session))
            box = session.add_point(xyz, positive=positive, run_prediction=run, return_mask=False)
            return reply(lease, session, box)
        return await in_session(lease, do, predicts=run)

    @app.post(P.PATH_ADD_BBOX)
    async def add_bbox(request: Request) -> Response:
        lease = client(request)
        body = await json_body(request)
        positive, run = flag(body, "include_interaction", True), flag(body, "run_prediction", True)
        override = flag(body, "override_capability_checks", False)
        if not positive:
            raise _bad("negative boxes are not supported: our models have no negative box channel; use negative "
                       "points or a negative scribble")

        def do(session):
            lo, hi = bbox_to_xyz(body.get("bbox_coords"), need_image_and_buffer(lease, session))
            flat = sum(a == b for a, b in zip(lo, hi))
            require(supported, "bbox2d" if flat else "bbox3d", trainer, override)
            box = session.add_box(lo, hi, run_prediction=run, return_mask=False)
            return reply(lease, session, box)
        return await in_session(lease, do, predicts=run)

    async def stroke(request: Request, kind: str) -> Response:
        lease = client(request)
        meta, mask = await array_body(request, kind)
        positive, run = flag(meta, "include_interaction", True), flag(meta, "run_prediction", True)
        require(supported, kind, trainer, flag(meta, "override_capability_checks", False))
        if kind == "lasso" and not positive:
            raise _bad("negative lassos are not supported: the lasso fills our box channel, which has no negative; "
                       "use a negative scribble")

        def do(session):
            offset = stroke_offset(mask, meta.get("interaction_bbox"), need_image_and_buffer(lease, session), kind)
            if kind == "scribble":
                box = session.add_scribble(mask, positive=positive, offset=offset, run_prediction=run,
                                           return_mask=False)
            else:
                box = session.add_lasso(mask, offset=offset, run_prediction=run, return_mask=False)
            return reply(lease, session, box)
        return await in_session(lease, do, predicts=run)

    @app.post(P.PATH_ADD_SCRIBBLE)
    async def add_scribble(request: Request) -> Response:
        return await stroke(request, "scribble")

    @app.post(P.PATH_ADD_LASSO)
    async def add_lasso(request: Request) -> Response:
        return await stroke(request, "lasso")

    @app.post(P.PATH_ADD_INITIAL_SEG)
    async def add_initial_seg(request: Request) -> Response:
        lease = client(request)
        meta, seg = await array_body(request, "initial segmentation")
        run = flag(meta, "run_prediction", False)
        require(supported, "initial_seg", trainer, flag(meta, "override_capability_checks", False))

        def do(session):
            shape = need_image_and_buffer(lease, session)
            if tuple(seg.shape) != tuple(shape):
                raise _bad(f"the initial segmentation's shape {list(seg.shape)} differs from the image's {list(shape)}")
            session.reset()  # the protocol's initial segmentation starts the object anew
            if not np.any(seg):
                return reply(lease, session, None)
            session.add_mask(seg, run_prediction=run, return_mask=False)
            # the client already holds the segmentation it sent: only what the network changed goes back
            return reply(lease, session, session.last_predicted_box if run else None)
        return await in_session(lease, do, predicts=run)

    # ------------------------------------------------------------------ extension: clinical text
    @app.post(TEXT_PATH)
    async def set_text(request: Request) -> Response:
        lease = client(request)
        body = await json_body(request)
        text, label = body.get("text"), body.get("label")
        if not isinstance(text, str):
            raise _bad(f"'text' must be a string (the case's clinical text; \"\" for none), got {text!r}")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
            raise _bad(f"'label' must be a label name or value, got {label!r}")
        if predictor.clinical_context is None or predictor.clinical_context.entry_key != "text":
            raise _bad(f"This model ({trainer}) does not read clinical text; {TEXT_PATH} is for TextAndPromptTrainer "
                       f"models.")

        def do(session):
            need_image_and_buffer(lease, session)
            if label is not None:
                session.set_target_label(label)  # a new object: its result starts anew
            return reply(lease, session, session.set_text(text, return_mask=False))
        return await in_session(lease, do, predicts=True)

    return app


def _spacing_of(spacing) -> list:
    try:
        s = [float(v) for v in spacing]
    except (TypeError, ValueError):
        raise _bad(f"image_properties.spacing must be 3 numbers, got {spacing!r}")
    if len(s) != 3 or not all(np.isfinite(v) and v > 0 for v in s):
        raise _bad(f"image_properties.spacing must be 3 positive numbers (per array axis), got {spacing!r}")
    return s
