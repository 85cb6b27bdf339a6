"""``timm.create_model("qpm_resnet50_cub", pretrained=True)`` downloads its weights through the Hub path.

The weights of a QPM with a random (non-placeholder) head are exported with ``qpm_timm.hub.save_pretrained``
into a folder that the local Hub (tests/helpers/hub_server.py) serves under the variant's ``hf_hub_id``; a fresh
interpreter pointed at it with ``HF_ENDPOINT`` must download, cache and load them, then load them again
with ``HF_HUB_OFFLINE=1`` and no request at all.
"""
import json

import pytest
import timm
import torch

import qpm_timm  # noqa: F401  (registers the qpm_* models)
from helpers.hub_server import hub_cache_repo_folder
from qpm_timm.hub import save_pretrained
from qpm_timm.models.qpm import default_cfgs

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

VARIANT = "qpm_resnet50_cub"

_CREATE = """
import json, warnings, torch, timm, qpm_timm
x = torch.load({input!r})
model = timm.create_model({variant!r}, pretrained=True).eval()
with torch.no_grad():
    torch.save(dict(logits=model(x), selection=model.head.selection, assignment=model.class_weights), {out!r})
report = dict(is_qpm=model.is_qpm, num_classes=model.num_classes)
if {other_classes}:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = timm.create_model({variant!r}, pretrained=True, num_classes={other_classes}).eval()
    with torch.no_grad():
        torch.save(dict(features=other.forward_features(x), logits=other(x)), {out!r} + ".other")
    report.update(other_is_qpm=other.is_qpm, other_classes=other.num_classes,
                  other_warnings=[str(w.message) for w in caught])
print(json.dumps(report))
"""


def _random_qpm_head(model, seed=0):
    """A valid QPM head unlike the placeholder: random selection, distinct random class rows, random mean/std."""
    gen = torch.Generator().manual_seed(seed)
    n_f, n_wc, classes = model.n_features, model.n_per_class, model.num_classes
    rows = set()
    while len(rows) < classes:
        rows.add(tuple(sorted(torch.randperm(n_f, generator=gen)[:n_wc].tolist())))
    assignment = torch.zeros(classes, n_f, dtype=torch.bool)
    for c, row in enumerate(sorted(rows)):
        assignment[c, list(row)] = True
    selection = torch.randperm(model.num_features, generator=gen)[:n_f]
    mean = torch.rand(n_f, generator=gen)
    std = torch.rand(n_f, generator=gen) + 0.5
    model.set_qpm_head(selection, assignment, mean, std)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(repo folder, input, expected logits, expected features) of a seeded qpm_resnet50_cub with a random head."""
    torch.manual_seed(0)
    model = timm.create_model(VARIANT).eval()
    _random_qpm_head(model)
    folder = tmp_path_factory.mktemp("hub") / VARIANT
    save_pretrained(model, folder)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, features = model(x), model.forward_features(x)
    return folder, x, logits, features, model


def test_create_model_pretrained_downloads_caches_and_loads_then_works_offline(tmp_path, hub_server, exported):
    folder, x, logits, features, model = exported
    repo_id = default_cfgs[VARIANT].default.hf_hub_id
    commit = hub_server.add_repo(repo_id, folder)
    hf_home = tmp_path / "hf_home"
    torch.save(x, tmp_path / "x.pt")
    code = dict(input=str(tmp_path / "x.pt"), variant=VARIANT)

    out = tmp_path / "online.pt"
    report = json.loads(hub_server.run_python(_CREATE.format(out=str(out), other_classes=0, **code), hf_home=hf_home))
    assert report == dict(is_qpm=True, num_classes=200)
    assert [r.path for r in hub_server.downloads()] == [f"/{repo_id}/resolve/main/model.safetensors"]
    cached = hub_cache_repo_folder(hf_home, repo_id) / "snapshots" / commit / "model.safetensors"
    assert cached.read_bytes() == (folder / "model.safetensors").read_bytes()
    got = torch.load(out)
    torch.testing.assert_close(got["logits"], logits)
    assert torch.equal(got["selection"], model.head.selection)
    assert torch.equal(got["assignment"], model.class_weights)

    hub_server.clear_requests()
    out = tmp_path / "offline.pt"
    report = json.loads(hub_server.run_python(
        _CREATE.format(out=str(out), other_classes=10, **code), hf_home=hf_home, offline=True))
    assert hub_server.requests == []
    torch.testing.assert_close(torch.load(out)["logits"], logits)
    # Documented rule (qpm_timm.models.qpm, "Loading rules"): another class count keeps the backbone
    # and gives a fresh dense head, with a warning that says so.
    other = torch.load(str(out) + ".other")
    assert (report["other_is_qpm"], report["other_classes"]) == (False, 10)
    assert any("backbone" in w for w in report["other_warnings"]), report["other_warnings"]
    torch.testing.assert_close(other["features"], features)
    assert other["logits"].shape == (2, 10)


_UNAVAILABLE = """
import timm, qpm_timm
try:
    timm.create_model({variant!r}, pretrained=True)
except qpm_timm.models.PretrainedWeightsUnavailableError as e:
    print(e)
"""


@pytest.mark.parametrize("case, reason", [
    ("no_repository", "the repository does not exist (or is private)"),
    ("empty_repository", "the repository holds no weights file"),
    ("offline_no_cache", "no network or HF_HUB_OFFLINE=1 (which skips the connection retries), and the weights are "
                         "not in the Hugging Face cache"),
])
def test_unpublished_variant_error_names_variant_repository_and_the_two_ways_to_weights(
        tmp_path, hub_server, case, reason):
    repo_id = default_cfgs[VARIANT].default.hf_hub_id
    if case == "empty_repository":
        (tmp_path / "empty").mkdir()
        hub_server.add_repo(repo_id, tmp_path / "empty")
    message = hub_server.run_python(_UNAVAILABLE.format(variant=VARIANT), hf_home=tmp_path / "hf_home",
                                    offline=case == "offline_no_cache")
    assert message.startswith(f"{VARIANT}: no pretrained weights at the Hugging Face Hub repository {repo_id}: "
                              f"{reason}.")
    for way in ("QPM-WithCrop (--source authors-qpm): https://drive.google.com/",
                f"python -m qpm_timm.convert --source authors-qpm --checkpoint <file.pth> --variant {VARIANT}",
                f"python -m qpm_timm.hub push <folder> --repo-id {repo_id}",
                f"python train.py --model {VARIANT} --dataset cub --data-dir <data>"):
        assert way in message, message
    statuses = {r.status for r in hub_server.requests}
    assert statuses == (set() if case == "offline_no_cache" else {404})
