"""The local Hub (tests/helpers/hub_server.py) serves folders the way ``huggingface_hub`` and timm need."""
import hashlib
import json
import os
import urllib.error
import urllib.request

import pytest

from helpers.hub_server import git_blob_sha1, hub_cache_repo_folder

REPO = "qpm-test/plain"


@pytest.fixture
def plain_repo(tmp_path, hub_server):
    """A repo with a small git file, an LFS-type weights file and a nested file; returns (folder, commit)."""
    folder = tmp_path / "repo"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architecture": "x", "num_classes": 3}))
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "sub" / "notes.txt").write_text("nested\n")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- image-classification\n---\n# card\n")
    commit = hub_server.add_repo(REPO, folder)
    return folder, commit


def _get(url, method="GET", headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


_DOWNLOAD = """
import json
from huggingface_hub import hf_hub_download
paths = {{f: hf_hub_download({repo!r}, f, revision="main") for f in ("config.json", "model.safetensors")}}
print(json.dumps(paths))
"""


def test_hf_hub_download_fetches_caches_and_then_works_offline_without_requests(tmp_path, hub_server, plain_repo):
    folder, commit = plain_repo
    hf_home = tmp_path / "hf_home"

    paths = json.loads(hub_server.run_python(_DOWNLOAD.format(repo=REPO), hf_home=hf_home))
    assert [r.path for r in hub_server.downloads(REPO)] == [
        f"/{REPO}/resolve/main/config.json", f"/{REPO}/resolve/main/model.safetensors"]
    snapshot = hub_cache_repo_folder(hf_home, REPO) / "snapshots" / commit
    for name, path in paths.items():
        assert os.path.realpath(path) == os.path.realpath(snapshot / name)
        assert open(path, "rb").read() == (folder / name).read_bytes()
    # Blobs are stored under the ETag: sha256 for the LFS-type weights, git blob sha1 for config.json.
    blobs = hub_cache_repo_folder(hf_home, REPO) / "blobs"
    weights = (folder / "model.safetensors").read_bytes()
    assert (blobs / hashlib.sha256(weights).hexdigest()).is_file()
    assert (blobs / git_blob_sha1((folder / "config.json").read_bytes())).is_file()

    hub_server.clear_requests()
    offline = json.loads(hub_server.run_python(_DOWNLOAD.format(repo=REPO), hf_home=hf_home, offline=True))
    assert offline == paths
    assert hub_server.requests == []


def test_missing_file_repo_and_revision_raise_the_huggingface_hub_errors(tmp_path, hub_server, plain_repo):
    code = f"""
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
for repo, name, rev, expected in [
        ({REPO!r}, "pytorch_model.bin", "main", EntryNotFoundError),
        ("qpm-test/absent", "config.json", "main", RepositoryNotFoundError),
        ({REPO!r}, "config.json", "no-such-branch", RevisionNotFoundError)]:
    try:
        hf_hub_download(repo, name, revision=rev)
    except expected as err:
        print(type(err).__name__)
"""
    out = hub_server.run_python(code, hf_home=tmp_path / "hf_home").split()
    assert out == ["RemoteEntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError"]
    assert [(r.method, r.status) for r in hub_server.requests] == [("HEAD", 404)] * 3


def test_timm_falls_back_from_model_safetensors_to_pytorch_model_bin(tmp_path, hub_server):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "bin_only"
    folder.mkdir()
    torch.save({"w": torch.arange(6.0)}, folder / "pytorch_model.bin")
    hub_server.add_repo("qpm-test/bin-only", folder)
    code = """
from timm.models import load_state_dict_from_hf
print(load_state_dict_from_hf("qpm-test/bin-only")["w"].tolist())
"""
    out = hub_server.run_python(code, hf_home=tmp_path / "hf_home")
    assert out.split("\n")[-2] == str([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    served = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in hub_server.requests]
    assert served[0] == ("HEAD", "model.safetensors", 404)
    assert ("GET", "pytorch_model.bin", 200) in served


def test_model_info_and_snapshot_download_see_every_file_and_the_card(tmp_path, hub_server, plain_repo):
    folder, commit = plain_repo
    code = f"""
import json, os
from huggingface_hub import model_info, snapshot_download
info = model_info({REPO!r}, files_metadata=True)
path = snapshot_download({REPO!r})
local = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
print(json.dumps(dict(sha=info.sha, license=info.card_data.license, path=path, local=local,
                      siblings=sorted((s.rfilename, s.size, s.lfs is not None) for s in info.siblings))))
"""
    out = json.loads(hub_server.run_python(code, hf_home=tmp_path / "hf_home"))
    names = ["README.md", "config.json", "model.safetensors", "sub/notes.txt"]
    assert out["sha"] == commit
    assert out["license"] == "apache-2.0"
    assert [s[0] for s in out["siblings"]] == names
    assert [s[1] for s in out["siblings"]] == [(folder / n).stat().st_size for n in names]
    assert [s[2] for s in out["siblings"]] == [False, False, True, False]
    assert out["local"] == names
    assert out["path"].endswith(commit)


def test_resolve_headers_ranges_and_commit_follow_the_folder(hub_server, plain_repo):
    folder, commit = plain_repo
    url = f"{hub_server.endpoint}/{REPO}/resolve/main/model.safetensors"
    weights = (folder / "model.safetensors").read_bytes()
    status, headers, body = _get(url, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == commit
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(weights))

    status, headers, body = _get(url, headers={"Range": "bytes=100-"})
    assert (status, body) == (206, weights[100:])
    assert headers["Content-Range"] == f"bytes 100-{len(weights) - 1}/{len(weights)}"
    assert _get(url, headers={"Range": f"bytes={len(weights)}-"})[0] == 416

    (folder / "config.json").write_text("{}")
    new_commit = hub_server.snapshot(REPO).commit
    assert new_commit != commit
    assert _get(url, method="HEAD")[1]["X-Repo-Commit"] == new_commit
    assert _get(f"{hub_server.endpoint}/{REPO}/resolve/{commit}/config.json", method="HEAD")[1]["X-Error-Code"] == (
        "RevisionNotFound")
