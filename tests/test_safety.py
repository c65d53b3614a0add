"""No stranger's pickle runs: a crafted pickle is offered through every way in, and each refuses it, saying why."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from app_server import AppServer
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hub_server import LoopbackHub
from kit import SHIPPED_HEAD, copy_tiny_plates
from pickle_payload import Payload
from PIL import Image
from safetensors.torch import save_file

import headkit
from headkit.datasets import DatasetError, load_dataset

PICKLE_WORDS = r"(?i)pickle|run code|code execution|weights_only"


def craft_pickle(path: Path, marker: Path) -> Path:
    """A torch.save'd checkpoint-like dict with a payload that creates `marker` when the file is unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(marker), "model.22.cv3.0.2.bias": torch.zeros(1)}, path)
    return path


def tamper_metadata(src: Path, dst: Path, change) -> Path:
    """Copy a .safetensors file with `change(metadata: dict[str, str])` applied to its header's `__metadata__`."""
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header.setdefault("__metadata__", {}))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    return dst


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a crafted pickle was unpickled: code from an upload ran"


@pytest.fixture
def evil_pt(tmp_path: Path, marker: Path) -> Path:
    return craft_pickle(tmp_path / "evil" / "evil.pt", marker)


@pytest.fixture
def evil_pth(tmp_path: Path, marker: Path) -> Path:
    return craft_pickle(tmp_path / "evil" / "evil.pth", marker)


@pytest.fixture
def head_file(tmp_path: Path, plate_head) -> Path:
    return plate_head.save(tmp_path / "good" / "license_plate.safetensors")


@pytest.fixture
def hub(loopback_hub, evil_pt: Path, head_file: Path):
    """A loopback Hub where `stranger` (not a trusted owner) offers pickles under many names, and a real head."""
    server = loopback_hub()
    for name in ("evil.pt", "evil.pth", "evil.PT", "evil.Pth", "sub/dir/evil.pt", "evil.safetensors"):
        server.add_file("stranger/repo", name, evil_pt)
    server.add_file("stranger/heads", "license_plate.safetensors", head_file)
    return server


def test_the_crafted_pickle_really_runs_code_when_unpickled(tmp_path: Path):
    """Control: without weights_only the payload fires (in a child process), so its absence elsewhere means a refusal."""
    fired = tmp_path / "fired"
    evil = craft_pickle(tmp_path / "control.pt", fired)
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(evil)], check=True, timeout=120, cwd=tmp_path)
    assert fired.exists()


# --- full models: pickles only from the operator's disk and trusted Hub owners --------------------------------------


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "sub/dir/evil.pt", "evil.pt@main"])
def test_pickle_from_an_untrusted_owner_is_refused_before_any_request(hub: LoopbackHub, marker: Path, name: str):
    with pytest.raises(headkit.UntrustedSourceError, match=r"refusing to download a pickle .* 'stranger'") as error:
        headkit.load_model(f"hf://stranger/repo/{name}")
    assert "run code" in str(error.value) and "HEADKIT_TRUSTED_OWNERS" in str(error.value)
    assert hub.requests == []


@pytest.mark.parametrize("name", ["evil.PT", "evil.Pth"])
def test_pickle_suffix_in_other_case_is_refused_too(hub: LoopbackHub, marker: Path, name: str):
    """Ultralytics loads any `*.pt` whatever its case; the allowlist must not be bypassed by `.PT`."""
    with pytest.raises(headkit.UntrustedSourceError, match=PICKLE_WORDS):
        headkit.load_model(f"hf://stranger/repo/{name}")
    assert hub.requests == []


@pytest.mark.parametrize(
    "source",
    ["hf://Ultralytics.evil/repo/evil.pt", "hf://ultralytics-x/repo/evil.pt", "hf://Ultralytics/../stranger/evil.pt"],
)
def test_owner_lookalikes_are_not_trusted(hub: LoopbackHub, marker: Path, source: str):
    with pytest.raises((headkit.UntrustedSourceError, ValueError)):
        headkit.load_model(source)
    assert hub.requests == []


def test_allowlist_is_what_the_operator_sets(hub: LoopbackHub, marker: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADKIT_TRUSTED_OWNERS", "")  # trust nobody, not even Ultralytics
    with pytest.raises(headkit.UntrustedSourceError, match="'Ultralytics'"):
        headkit.load_model("hf://Ultralytics/YOLOv8/yolov8n.pt")
    monkeypatch.setenv("HEADKIT_TRUSTED_OWNERS", "someone-else, another")
    with pytest.raises(headkit.UntrustedSourceError, match="Trusted owners: another, someone-else"):
        headkit.load_model("hf://stranger/repo/evil.pt")
    assert hub.requests == []


def test_pickle_renamed_to_safetensors_is_not_a_model(hub: LoopbackHub, marker: Path):
    """A .safetensors base is read as safetensors only (the embedded-base format), so a pickle in one never loads."""
    message = r"evil\.safetensors: not a readable \.safetensors file: its safetensors header is missing, damaged"
    with pytest.raises(ValueError, match=message):
        headkit.load_model("hf://stranger/repo/evil.safetensors")


# --- heads: safetensors from anyone, legacy .pth only as plain tensors ----------------------------------------------


def test_legacy_pth_with_code_is_refused_saying_why(evil_pth: Path, marker: Path, base):
    """weights_only refuses it; the user should learn why a .pth was refused and what to send instead."""
    with pytest.raises(ValueError, match="evil.pth: ") as error:
        headkit.load_head(evil_pth, base=base)
    message = str(error.value).lower()
    assert "pickle" in message and ("code" in message or "safetensors" in message), message


def test_full_model_offered_as_a_head_is_refused(evil_pt: Path, marker: Path, base):
    with pytest.raises(ValueError, match=r"heads are \.safetensors files .*headkit\.load_model"):
        headkit.load_head(evil_pt, base=base)


@pytest.mark.parametrize("name", ["evil.pth", "evil.Pth", "evil.PT", "sub/dir/evil.pt"])
def test_pickled_head_from_an_untrusted_owner_is_refused_before_any_request(
    hub: LoopbackHub, marker: Path, base, name: str
):
    with pytest.raises(headkit.UntrustedSourceError, match=PICKLE_WORDS):
        headkit.load_head(f"hf://stranger/repo/{name}", base=base)
    assert hub.requests == []


def test_pickle_renamed_to_safetensors_is_not_a_head(evil_pt: Path, tmp_path: Path, marker: Path):
    disguised = tmp_path / "head.safetensors"
    disguised.write_bytes(evil_pt.read_bytes())
    with pytest.raises(ValueError, match=r"head.safetensors: not a readable \.safetensors file"):
        headkit.load_head(disguised)


def test_safetensors_head_from_any_owner_loads(hub: LoopbackHub, plate_head):
    """safetensors holds tensors and text only: a stranger's head is data, never code."""
    head = headkit.load_head("hf://stranger/heads/license_plate.safetensors")
    assert head.names == plate_head.names and head.base_fingerprint == plate_head.base_fingerprint
    assert hub.requests and all("/stranger/heads/" in r for r in hub.requests)


def _drop_format(meta: dict) -> None:
    del meta["format"]


def _garbage_json(meta: dict) -> None:
    meta["names"] = "{0: 'plate',"


def _other_format(meta: dict) -> None:
    meta["format"] = json.dumps("someone.else/9")


def _drop_fingerprint(meta: dict) -> None:
    del meta["base_fingerprint"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop_format, r"not a headkit head \(metadata 'format' should be 'headkit.head/1' or 'headkit.head/2'\)"),
        (_other_format, "not a headkit head"),
        (_garbage_json, "metadata 'names' is not headkit's JSON"),
        (_drop_fingerprint, r"head metadata lacks \['base_fingerprint'\]"),
    ],
)
def test_tampered_head_metadata_is_a_clear_error(head_file: Path, tmp_path: Path, change, message: str):
    tampered = tamper_metadata(head_file, tmp_path / "tampered.safetensors", change)
    with pytest.raises(ValueError, match=f"tampered.safetensors: {message}"):
        headkit.load_head(tampered)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut off
        lambda data: struct.pack("<Q", 1 << 40) + data[8:],  # header length far past the end
        lambda data: data[:8] + b"\xff" * 16 + data[24:],  # header is not JSON
        lambda data: b"",
    ],
    ids=["truncated", "huge-header-length", "binary-header", "empty"],
)
def test_damaged_head_file_is_a_clear_error(head_file: Path, tmp_path: Path, damage):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(damage(head_file.read_bytes()))
    with pytest.raises(ValueError, match=r"broken.safetensors: not a readable \.safetensors file"):
        headkit.load_head(broken)


def test_head_whose_tensors_contradict_its_metadata_is_refused_before_merging(
    head_file: Path, tmp_path: Path, plate_head, base
):
    """Metadata claiming 3 classes over 1-class tensors must not reach Detect.load_state_dict as a RuntimeError."""
    tampered = tamper_metadata(
        head_file,
        tmp_path / "three.safetensors",
        lambda meta: meta.update(names=json.dumps({"0": "a", "1": "b", "2": "c"})),
    )
    with pytest.raises(ValueError, match="three.safetensors|tensors"):
        headkit.merge(base, headkit.load_head(tampered))


def test_safetensors_never_holds_code(tmp_path: Path, head_file: Path):
    """A head is tensors + text: metadata that reads like a pickle stays an inert string."""
    pickled = torch.tensor(list(b"cos\nsystem\n(S'touch /tmp/x'\ntR.")).to(torch.uint8)
    path = tmp_path / "odd.safetensors"
    save_file({"blob": pickled}, path, metadata={"format": "cos\nsystem\n"})
    with pytest.raises(ValueError, match=r"odd.safetensors: tensors of type \['U8'\]; headkit files hold only"):
        headkit.load_head(path)


# --- datasets: a pickle inside an upload is data at most, never loaded ---------------------------------------------


def test_pickle_inside_a_dataset_zip_is_never_loaded(
    plates_dir: Path, tmp_path: Path, evil_pt: Path, evil_pth: Path, marker: Path
):
    data = copy_tiny_plates(plates_dir, tmp_path / "data")
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(data.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(data).as_posix())
        for where in ("evil.pt", "weights/best.pt", "images/train/evil.pt", "labels/train/evil.pth", "yolov8n.pt"):
            zf.write(evil_pt if where.endswith(".pt") else evil_pth, where)
    work = tmp_path / "work"
    summary = load_dataset(archive, work_dir=work)
    assert summary.splits["train"].images == 8 and summary.root.is_relative_to(work)
    assert not [p for p in work.rglob("*") if p.suffix in (".pt", ".pth")]  # never even extracted
    assert any("skipped 5 file(s)" in w and "weights/best.pt" in w for w in summary.warnings), summary.warnings


def test_pickle_named_as_an_image_is_refused(tiny_plates: Path, tmp_path: Path, evil_pt: Path, marker: Path):
    (tiny_plates / "images" / "train" / "photo.jpg").write_bytes(evil_pt.read_bytes())
    with pytest.raises(DatasetError, match="images/train/photo.jpg: not a readable image"):
        load_dataset(tiny_plates, work_dir=tmp_path / "work")


def test_data_yaml_cannot_run_code(tiny_plates: Path, tmp_path: Path, marker: Path):
    """Ultralytics runs a data.yaml's `download:` as Python; YAML tags can build objects. Neither may run here."""
    yaml_path = tiny_plates / "data.yaml"
    plain = yaml_path.read_text()
    yaml_path.write_text(plain + f"download: |\n  open({str(marker)!r}, 'w')\n")
    summary = load_dataset(tiny_plates, work_dir=tmp_path / "work")
    assert "download" not in summary.yaml_path.read_text()
    yaml_path.write_text(plain + f"extra: !!python/object/apply:builtins.open [{str(marker)!r}, 'w']\n")
    with pytest.raises(DatasetError, match="data.yaml.*not valid YAML"):
        load_dataset(tiny_plates, work_dir=tmp_path / "work2")


# --- the app, through gradio_client, as a stranger on the internet would use it --------------------------------------


@pytest.fixture(scope="module")
def app(offline_app: AppServer) -> AppServer:
    return offline_app


def _client(app: AppServer) -> Client:
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def upload_marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "PWNED"


@pytest.fixture
def app_marker(upload_marker: Path):
    yield upload_marker
    assert not upload_marker.exists(), "an uploaded pickle was unpickled by the app"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory, upload_marker: Path) -> dict[str, Path]:
    """Crafted pickles under every name a user might give them, a torch.save zip among them."""
    folder = tmp_path_factory.mktemp("uploads")
    names = ("evil.pt", "evil.PT", "evil.pth", "best.ckpt", "head.safetensors", "data.zip", "photo.jpg", "photo.png")
    return {name: craft_pickle(folder / name, upload_marker) for name in names}


def _refused(call, reason: str) -> str:
    """Run a gradio_client call that must fail with an error whose text (what the user sees) matches `reason`."""
    with pytest.raises(AppError) as error:
        call()
    message = str(error.value)
    assert "has not enabled verbose error reporting" not in message, "the user is told nothing about why"
    assert re.search(reason, message), f"expected /{reason}/, the user saw: {message}"
    return message


def _still_serving(app: AppServer, base: str, bus_jpg: Path) -> None:
    result = _client(app).predict(base, handle_file(bus_jpg), [], 0.25, 0.7, 320, api_name="/compare")
    assert result[5]["base_count"] >= 1 and app.process.poll() is None


PICKLE_REASON = r"(?i)pickle"
ZIP_REASON = r"(?i)\.zip|pickle"
IMAGE_REASON = r"(?i)not a (readable|usable|valid) image|cannot identify image|not an image"
NO_SUCH_SESSION_HEAD = r"this session has no head '.*secret_plates' \(its heads: none yet\); train or add one first"
NOT_THIS_SESSIONS = (  # what each guess at another session's head (key, name, path out of the job, file) is told
    NO_SUCH_SESSION_HEAD,
    NO_SUCH_SESSION_HEAD,
    NO_SUCH_SESSION_HEAD,
    r"unknown head '.*secret_plates\.safetensors'; give a shipped head's name, session/<name>",
)
NOT_A_HUB_ADDRESS = r"'.*\.safetensors' is not a Hub address; upload a head \(\.safetensors\) or give hf://owner/repo/"


@pytest.mark.parametrize(
    ("api", "file", "reason"),
    [
        ("/load_head", "evil.pt", PICKLE_REASON),
        ("/load_head", "evil.PT", PICKLE_REASON),
        ("/load_head", "evil.pth", PICKLE_REASON),
        ("/load_head", "best.ckpt", PICKLE_REASON),
        ("/load_head", "head.safetensors", r"not a readable \.safetensors file"),
        ("/load_dataset", "evil.pt", ZIP_REASON),
        ("/load_dataset", "data.zip", r"no dataset folder structure found"),
        ("/train_head", "evil.pt", ZIP_REASON),
        ("/train_head", "data.zip", r"no dataset folder structure found"),
        ("/convert_to_keypoints", "evil.pt", ZIP_REASON),
        ("/convert_to_keypoints", "data.zip", r"no dataset folder structure found"),
        ("/compare", "evil.pt", IMAGE_REASON),
        ("/compare", "photo.jpg", IMAGE_REASON),
        ("/push_head", "photo.png", IMAGE_REASON),
    ],
)
def test_app_refuses_a_pickle_in_every_upload_field(
    app: AppServer, app_marker: Path, uploads: dict[str, Path], base_weights: Path, api: str, file: str, reason: str
):
    base, upload = str(base_weights), handle_file(uploads[file])
    args = {
        "/load_head": (base, upload, ""),
        "/load_dataset": (base, upload),
        "/train_head": (base, upload, 1, 160, 4, False),
        "/convert_to_keypoints": (upload,),
        "/compare": (base, upload, [], 0.25, 0.7, 320),
        "/push_head": (base, "license_plate", "someone/plates", "hf_token", upload),
    }[api]
    client = _client(app)
    client.predict(base, api_name="/list_heads")  # the session's head pickers get their choices
    _refused(lambda: client.predict(*args, api_name=api), reason)


@pytest.mark.parametrize(
    ("api", "address"),
    [
        ("/load_head", "hf://stranger/repo/evil.pt"),
        ("/load_head", "hf://stranger/repo/evil.PT"),
        ("/load_head", "hf://stranger/repo/evil.pth"),
        ("/load_head", "hf://Ultralytics/YOLOv8/yolov8n.pt"),  # even from a trusted owner: a head is never a pickle
        ("/compare", "hf://stranger/repo/evil.pt"),
    ],
)
def test_app_refuses_pickle_addresses_before_any_download(
    app: AppServer, app_marker: Path, base_weights: Path, bus_jpg: Path, api: str, address: str
):
    base = str(base_weights)
    if api == "/load_head":
        call = lambda: _client(app).predict(base, None, address, api_name=api)  # noqa: E731
    else:
        call = lambda: _client(app).predict(base, handle_file(bus_jpg), [address], 0.25, 0.7, 320, api_name=api)  # noqa: E731
    _refused(call, PICKLE_REASON)


def test_app_refuses_a_server_path_typed_as_a_hub_address(app: AppServer, app_marker: Path, base_weights: Path):
    """The address box takes hf:// addresses only: a path on the server is neither loaded nor confirmed to exist."""
    client, base = _client(app), str(base_weights)
    client.predict(base, api_name="/list_heads")
    messages = [
        _refused(lambda path=path: client.predict(base, None, str(path), api_name="/load_head"), NOT_A_HUB_ADDRESS)
        for path in (SHIPPED_HEAD, SHIPPED_HEAD.with_name("no_such_head.safetensors"))
    ]
    assert messages[0].replace("license_plate", "no_such_head") == messages[1], "the reply tells which files exist"
    assert [e["key"] for e in client.predict(base, api_name="/list_heads")[0] if e["origin"] == "session"] == []


def _zip_with(tmp_path: Path, name: str, entries: dict[str, bytes], *, data: Path | None = None) -> Path:
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(data.rglob("*")) if data else []:
            if path.is_file():
                zf.write(path, path.relative_to(data).as_posix())
        for entry, content in entries.items():
            zf.writestr(entry, content)
    return archive


def _png_claiming(width: int, height: int) -> bytes:
    """A 16x16 PNG whose header claims another size."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


_HOSTILE_ZIPS = {
    "traversal": ({"../../../../escaped.txt": b"pwned"}, r"outside the dataset folder"),
    "bomb": ({"images/train/zeros.jpg": bytes(64 << 20)}, r"zip bomb"),
    "not-an-image": (
        {"images/train/fake.jpg": b"MZ\x90\x00 an executable named .jpg"},
        r"fake.jpg: not a readable image",
    ),
    "pixel-bomb": ({"images/train/huge.png": _png_claiming(30_000, 30_000)}, r"huge.png: image too large"),
    "utf16-label": ({}, r"is UTF-16 text, expected UTF-8"),
}


@pytest.mark.parametrize("api", ["/load_dataset", "/train_head", "/convert_to_keypoints"])
@pytest.mark.parametrize("kind", list(_HOSTILE_ZIPS))
def test_app_refuses_hostile_zips_clearly_and_keeps_serving(
    app: AppServer, tiny_plates: Path, tmp_path: Path, base_weights: Path, bus_jpg: Path, api: str, kind: str
):
    entries, reason = _HOSTILE_ZIPS[kind]
    if kind == "utf16-label":
        label = sorted((tiny_plates / "labels" / "train").glob("*.txt"))[0]
        label.write_bytes(label.read_text().encode("utf-16"))
    archive = _zip_with(tmp_path, f"{kind}.zip", entries, data=tiny_plates)
    base, upload = str(base_weights), handle_file(archive)
    args = {
        "/load_dataset": (base, upload),
        "/train_head": (base, upload, 1, 160, 4, False),
        "/convert_to_keypoints": (upload,),
    }[api]
    _refused(lambda: _client(app).predict(*args, api_name=api), reason)
    escaped = list(app.jobs.parent.rglob("escaped.txt"))
    assert escaped == [], f"a zip entry was written outside the job folder: {escaped}"
    _still_serving(app, base, bus_jpg)


@pytest.mark.parametrize("kind", ["header-claims-900MP", "real-144MP"])
def test_app_refuses_a_decompression_bomb_image_clearly_and_keeps_serving(
    app: AppServer, tmp_path: Path, base_weights: Path, bus_jpg: Path, kind: str
):
    bomb = tmp_path / "bomb.png"
    if kind == "real-144MP":
        Image.new("1", (12_000, 12_000)).save(bomb, optimize=True)  # ~20 KB on disk, 432 MB once decoded to RGB
    else:
        bomb.write_bytes(_png_claiming(30_000, 30_000))
    assert bomb.stat().st_size < 100_000
    base = str(base_weights)
    call = lambda: _client(app).predict(base, handle_file(bomb), [], 0.25, 0.7, 320, api_name="/compare")  # noqa: E731
    _refused(call, r"(?i)decompression bomb|too large|pixels")
    _still_serving(app, base, bus_jpg)


# --- isolation: one session cannot reach another's files ------------------------------------------------------------


@pytest.fixture(scope="module")
def session_a(app: AppServer, base_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """Session A uploads a head of its own; returns its client, the head's key and where the app keeps it."""
    secret = tmp_path_factory.mktemp("a") / "secret_plates.safetensors"
    secret.write_bytes(SHIPPED_HEAD.read_bytes())
    client = _client(app)
    listing = client.predict(str(base_weights), handle_file(secret), "", api_name="/load_head")[0]
    key = next(e["key"] for e in listing if e["origin"] == "session")
    files = list(app.jobs.rglob("secret_plates*.safetensors"))
    assert len(files) == 1, files
    return client, key, files[0]


def test_other_session_does_not_see_the_head(app: AppServer, session_a, base_weights: Path):
    client_a, key, _ = session_a
    base = str(base_weights)
    assert key in [e["key"] for e in client_a.predict(base, api_name="/list_heads")[0]]
    assert key not in [e["key"] for e in _client(app).predict(base, api_name="/list_heads")[0]]


def test_other_session_cannot_use_or_merge_the_head_by_its_key(
    app: AppServer, session_a, base_weights: Path, bus_jpg: Path
):
    _, key, path = session_a
    base, b = str(base_weights), _client(app)
    b.predict(base, api_name="/list_heads")
    guesses = [key, f"session/{path.stem}", f"session/../{path.parent.parent.name}/heads/{path.stem}", str(path)]
    for guess, reason in zip(guesses, NOT_THIS_SESSIONS, strict=True):
        _refused(
            lambda guess=guess: b.predict(base, handle_file(bus_jpg), [guess], 0.25, 0.7, 320, api_name="/compare"),
            reason,
        )
        _refused(lambda guess=guess: b.predict(base, [guess], True, False, 320, api_name="/merge"), reason)


def test_other_session_cannot_import_the_head_by_its_server_path(app: AppServer, session_a, base_weights: Path):
    _, _, path = session_a
    b, base = _client(app), str(base_weights)
    b.predict(base, api_name="/list_heads")
    _refused(lambda: b.predict(base, None, str(path), api_name="/load_head"), NOT_A_HUB_ADDRESS)
    assert [e["key"] for e in b.predict(base, api_name="/list_heads")[0] if e["origin"] == "session"] == []


def test_other_session_cannot_download_the_head_or_list_job_folders(app: AppServer, session_a):
    _, _, path = session_a
    for target in (path, path.parent, app.jobs, path.parent.parent):
        response = httpx.get(f"{app.url}/gradio_api/file={target}", timeout=30)
        assert response.status_code in (403, 404), (target, response.status_code)
        assert SHIPPED_HEAD.read_bytes()[:64] not in response.content


def test_other_session_cannot_pass_the_heads_path_as_an_upload(app: AppServer, session_a, base_weights: Path):
    """A file input accepts only files uploaded to the server, not any server path named in the request."""
    _, _, path = session_a
    payload = {"data": [str(base_weights), {"path": str(path), "meta": {"_type": "gradio.FileData"}}, ""]}
    event = httpx.post(f"{app.url}/gradio_api/call/load_head", json=payload, timeout=30).json()["event_id"]
    stream = httpx.get(f"{app.url}/gradio_api/call/load_head/{event}", timeout=120).text
    assert "event: error" in stream and "event: complete" not in stream, stream[:500]


def test_old_job_folders_are_swept_after_the_age_the_operator_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """HEADKIT_JOB_MAX_AGE_S sets the age; the sweep never follows a link out of the jobs folder."""
    monkeypatch.setenv("HEADKIT_JOB_MAX_AGE_S", "600")
    monkeypatch.setenv("HEADKIT_JOBS_DIR", str(tmp_path / "jobs"))
    settings = headkit.server.Settings.from_env()
    root = headkit.server.JobRoot(settings.jobs_dir, max_age_s=settings.job_max_age_s)
    old, recent = root.job("session-old"), root.job("session-recent")
    outside = tmp_path / "someone-elses"
    (outside / "keep.txt").parent.mkdir()
    (outside / "keep.txt").write_text("not a job")
    (root.root / "link").symlink_to(outside, target_is_directory=True)
    for folder, age in ((old.path, 700), (recent.path, 500), (outside, 7200)):
        os.utime(folder, (time.time() - age, time.time() - age))
    assert root.sweep() == [old.path]
    assert recent.path.is_dir() and (outside / "keep.txt").is_file() and (root.root / "link").is_symlink()
