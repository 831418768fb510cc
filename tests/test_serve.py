"""`nnunet-prompt serve` driven by the real nninteractive-client, as 3D Slicer and napari drive it.

The server runs as a subprocess on a free loopback port with the fixtures' trained PromptTrainer_demo; every
reply the client writes into its target buffer must equal what an in-process InteractiveSession gives for the
same prompts."""
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from nnInteractive.inference.remote import (ServerAtCapacityError, SessionExpiredError,
                                            nnInteractiveRemoteInferenceSession)
from nnInteractive.inference.remote.serialization import pack_array

from conftest import console_script, start_server
from nnunet_prompt.inference.session import InteractiveSession

KEY = "test-key-0123"
_LOADING = threading.Lock()
MAX_SESSIONS = 3


@pytest.fixture(scope="module")
def server(trained):
    proc, url = start_server(trained, "--api-key", KEY, "--max-sessions", str(MAX_SESSIONS))
    yield url
    proc.terminate()
    proc.wait(30)


def _case(trained, i=0):
    raw = trained["raw"]
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[i]
    img = sitk.ReadImage(os.path.join(raw, "imagesTs", case + "_0000.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", case + ".nii.gz")))
    return sitk.GetArrayFromImage(img).astype(np.float32), img.GetSpacing(), label


def _pair(trained, server, i=0):
    """A remote session (the real client) and an in-process session on the same image."""
    image, spacing_xyz, label = _case(trained, i)
    remote = nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    try:
        remote.set_image(image[None], {"spacing": list(spacing_xyz[::-1])})
        buffer = np.zeros(image.shape, np.uint8)
        remote.set_target_buffer(buffer)
        with _LOADING:  # nnU-Net's trainer lookup walks sys.modules: not safe from two threads at once
            local = InteractiveSession(trained["folder"], fold=0, device="cpu")
        local.set_image(image, spacing=spacing_xyz)
    except BaseException:
        remote.close()  # a lease left behind would count against the next test's capacity
        raise
    return remote, buffer, local, label


def test_client_buffer_equals_the_session_for_every_interaction(trained, server):
    remote, buffer, local, label = _pair(trained, server)
    try:
        assert remote.supported_interactions == {"points": True, "scribble": True, "bbox2d": True, "bbox3d": True,
                                                 "lasso": True}
        assert remote.supports_initial_label and remote.supports_undo
        assert remote.original_image_shape == (1, *label.shape)
        z, y, x = (int(v) for v in np.argwhere(label > 0).mean(0).round())
        zz, yy, xx = np.nonzero(label)

        def same(what):
            np.testing.assert_array_equal(buffer, local.mask, err_msg=what)

        timings = []
        remote._http.event_hooks["response"].append(lambda r: timings.append(r.headers.get("Server-Timing")))
        bbox = remote.add_point_interaction([z, y, x], include_interaction=True)
        local.add_point((x, y, z), positive=True)
        same("positive point")
        network_ms = float(timings[-1].split("network;dur=")[1].split(",")[0])
        session_ms = float(timings[-1].split("session;dur=")[1])
        assert 0 < network_ms <= session_ms, "the reply says what its time went to"
        assert buffer.any(), "a click in the object gives an object"
        assert [tuple(b) for b in bbox] == list(local.last_changed_box), "the reply is the box the click changed"
        remote.add_point_interaction([z, y, min(x + 4, label.shape[2] - 1)], include_interaction=False)
        local.add_point((min(x + 4, label.shape[2] - 1), y, z), positive=False)
        same("negative point")
        sl = label[z] > 0
        ys, xs = np.nonzero(sl)
        remote.add_bbox_interaction([[z, z + 1], [ys.min(), ys.max() + 1], [xs.min(), xs.max() + 1]],
                                    include_interaction=True)
        local.add_box((xs.min(), ys.min(), z), (xs.max(), ys.max(), z))
        same("2D box")
        remote.add_bbox_interaction([[zz.min(), zz.max() + 1], [yy.min(), yy.max() + 1], [xx.min(), xx.max() + 1]],
                                    include_interaction=True)
        local.add_box((xx.min(), yy.min(), zz.min()), (xx.max(), yy.max(), zz.max()))
        same("3D box")
        scribble = np.zeros(label.shape, np.uint8)
        scribble[z, y, max(0, x - 5):x + 5] = 1
        remote.add_scribble_interaction(scribble, include_interaction=True)
        local.add_scribble(scribble, positive=True)
        same("scribble")
        lasso_box = [[z, z + 1], [ys.min(), ys.max() + 1], [xs.min(), xs.max() + 1]]
        lasso = sl[ys.min():ys.max() + 1, xs.min():xs.max() + 1][None].astype(np.uint8)
        remote.add_lasso_interaction(lasso, include_interaction=True, interaction_bbox=lasso_box)
        local.add_lasso(lasso, offset=(z, ys.min(), xs.min()))
        same("lasso (a crop at its bbox)")
        assert remote.undo() is True
        local.undo()
        same("undo")
        assert timings[-1] is None, "an undo runs no network, and its reply does not say it did"
        # queued interactions, then one prediction
        assert remote.add_point_interaction([z, y, x], True, run_prediction=False) is None
        local.add_point((x, y, z), run_prediction=False)
        remote._predict()
        local.predict()
        same("queued point + predict")
        # refine an automatic contour: the initial segmentation, then a click
        contour = np.zeros(label.shape, np.uint8)
        contour[zz.min():zz.max() + 1, yy.min():yy.max() + 1, xx.min():xx.max() + 1] = 1  # a rough contour
        remote.add_initial_seg_interaction(contour)
        local.reset()
        local.add_mask(contour, run_prediction=False)
        same("initial segmentation")
        np.testing.assert_array_equal(buffer, contour)
        remote.add_point_interaction([z, y, x], include_interaction=True)
        local.add_point((x, y, z))
        same("click on the initial segmentation")
        remote.set_do_autozoom(False)
        local.grow = False
        remote.add_point_interaction([zz.max(), yy.max(), xx.max()], include_interaction=False)
        local.add_point((xx.max(), yy.max(), zz.max()), positive=False)
        same("no autozoom")
        remote.reset_interactions()
        assert not buffer.any()
        assert remote.undo() is False, "nothing to undo after a reset"
    finally:
        remote.close()


def test_two_clients_at_once_see_only_their_own_image(trained, server):
    results = {}

    def work(i):
        remote, buffer, local, label = _pair(trained, server, i)
        try:
            z, y, x = (int(v) for v in np.argwhere(label > 0).mean(0).round())
            for _ in range(2):
                remote.add_point_interaction([z, y, x], include_interaction=True)
                local.add_point((x, y, z))
            results[i] = (buffer.copy(), local.mask)
        finally:
            remote.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {0, 1}
    for i, (remote_mask, local_mask) in results.items():
        np.testing.assert_array_equal(remote_mask, local_mask, err_msg=f"client {i}")
    assert not np.array_equal(results[0][0], results[1][0]), "two different images, two different results"


def test_keys_leases_and_capacity(trained, server):
    with pytest.raises(httpx.HTTPStatusError) as e:
        nnInteractiveRemoteInferenceSession(server, api_key="wrong")
    assert e.value.response.status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    tokens = [httpx.post(server + "/claim", headers=auth).json()["lease_token"] for _ in range(MAX_SESSIONS)]
    try:
        with pytest.raises(ServerAtCapacityError):
            nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    finally:
        for t in tokens:
            httpx.post(server + "/release", headers={**auth, "X-Lease-Token": t})
    remote = nnInteractiveRemoteInferenceSession(server, api_key=KEY)
    try:
        status = remote.lease_status()
        assert 0 < status["remaining_seconds"] <= status["idle_timeout_seconds"]
        httpx.post(server + "/release", headers={**auth, "X-Lease-Token": remote._lease_token})
        with pytest.raises(SessionExpiredError):
            remote.set_do_autozoom(True)
    finally:
        remote.close()


def test_bad_requests_get_a_4xx_that_names_the_problem(trained, server):
    auth = {"Authorization": f"Bearer {KEY}"}
    token = httpx.post(server + "/claim", headers=auth).json()["lease_token"]
    h = {**auth, "X-Lease-Token": token}
    image, spacing_xyz, label = _case(trained)

    def post(path, expect, match, **kw):
        r = httpx.post(server + path, headers={**h, **kw.pop("headers", {})}, timeout=120, **kw)
        assert r.status_code == expect, (path, r.status_code, r.text)
        assert match in r.json()["detail"], r.json()["detail"]

    def packed(a, meta=None):
        return dict(content=pack_array(a), headers={"X-Meta": json.dumps(meta or {}),
                                                    "Content-Type": "application/octet-stream"})

    try:
        post("/add_point_interaction", 409, "set_image", json={"coordinates": [1, 1, 1], "include_interaction": True})
        post("/set_image", 400, "4D", **packed(image))
        post("/set_image", 400, "not a packed array", content=b"not an array",
             headers={"X-Meta": "{}", "Content-Type": "application/octet-stream"})
        post("/set_image", 400, "X-Meta", content=pack_array(image[None]),
             headers={"X-Meta": "{broken", "Content-Type": "application/octet-stream"})
        post("/set_image", 400, "spacing", **packed(image[None], {"image_properties": {"spacing": [1, -2, 1]}}))
        with_nan = image.astype(np.float32)
        with_nan[0, 0, 0] = np.nan
        post("/set_image", 400, "NaN", **packed(with_nan[None], {"image_properties": {"spacing": list(spacing_xyz[::-1])}}))
        ok = packed(image[None], {"image_properties": {"spacing": list(spacing_xyz[::-1])}})
        assert httpx.post(server + "/set_image", headers={**h, **ok.pop("headers")}, timeout=120, **ok).status_code == 200
        post("/add_point_interaction", 409, "set_target_buffer", json={"coordinates": [1, 1, 1]})
        post("/set_target_buffer", 400, "differs from the image", json={"shape": [3, 4, 5], "dtype": "uint8"})
        post("/set_target_buffer", 400, "dtype", json={"shape": list(label.shape), "dtype": "no-such-type"})
        assert httpx.post(server + "/set_target_buffer", headers=h,
                          json={"shape": list(label.shape), "dtype": "uint8"}).status_code == 200
        post("/add_point_interaction", 400, "outside the image", json={"coordinates": [0, 0, 10_000]})
        post("/add_point_interaction", 400, "coordinates", json={"coordinates": "centre"})
        post("/add_point_interaction", 400, "coordinates", json={"coordinates": [1, 1]})
        post("/add_point_interaction", 400, "outside the image", json={"coordinates": [-5, 1, 1]})
        post("/add_point_interaction", 400, "include_interaction", json={"coordinates": [1, 1, 1],
                                                                         "include_interaction": "yes"})
        post("/add_bbox_interaction", 400, "negative boxes", json={"bbox_coords": [[0, 1], [0, 5], [0, 5]],
                                                                   "include_interaction": False})
        post("/add_bbox_interaction", 400, "no extent", json={"bbox_coords": [[2, 2], [0, 5], [0, 5]]})
        post("/add_scribble_interaction", 400, "differs from the image", **packed(np.ones((2, 2, 2), np.uint8)))
        post("/add_lasso_interaction", 400, "interaction_bbox",
             **packed(np.ones((1, 2, 2), np.uint8), {"interaction_bbox": [[0, 1], [0, 2], [0, 3]]}))
        post("/add_initial_seg_interaction", 400, "differs from the image", **packed(np.ones((2, 2, 2), np.uint8)))
        post("/add_point_interaction", 400, "JSON", content=b"{not json", headers={"Content-Type": "application/json"})
        # the server keeps serving this session and others
        z, y, x = (int(v) for v in np.argwhere(label > 0).mean(0).round())
        r = httpx.post(server + "/add_point_interaction", headers=h, timeout=120,
                       json={"coordinates": [z, y, x], "include_interaction": True})
        assert r.status_code == 200 and json.loads(r.headers["X-Meta"])["ran_prediction"] is True
        assert httpx.get(server + "/healthz").json() == {"ok": True}
    finally:
        httpx.post(server + "/release", headers=h)


def test_leases_are_reaped_when_idle_or_silent():
    from nnunet_prompt.serve.leases import LeaseGone, LeaseRegistry
    reg = LeaseRegistry(object, max_sessions=2, idle_timeout_s=0.8, liveness_timeout_s=0.3)
    silent, beating = reg.claim(), reg.claim()
    for _ in range(3):  # heartbeats keep a client alive past the liveness timeout...
        time.sleep(0.15)
        reg.heartbeat(beating)
    with pytest.raises(LeaseGone):
        reg.get(silent)  # ...a crashed (silent) one is reaped
    with pytest.raises(LeaseGone):  # but heartbeats do not postpone the idle timeout
        for _ in range(20):
            time.sleep(0.15)
            reg.heartbeat(beating)
    assert len(reg) == 0


def test_serve_refuses_an_open_port_without_a_key(trained):
    proc = subprocess.run([console_script("nnunet-prompt"), "serve", trained["folder"], "--host", "0.0.0.0",
                           "--device", "cpu"], env=dict(trained["env"], NN_INTERACTIVE_API_KEY=""),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode != 0 and "without an API key" in proc.stdout
