"""``python -m qpm_timm.hub push``: one commit to the local Hub (tests/helpers/hub_server.py), then
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` downloads the same model back from it."""
import json

import pytest
import timm
import torch
import yaml

import qpm_timm
from qpm_timm import hub
from qpm_timm.models.head import placeholder_assignment

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

REPO = 'qpm-test/qpm-concepts'
SLIM = dict(n_features=8, n_per_class=3, channels=[16, 32, 64, 128], stem_width=16)  # the embedded default's shape
FILES = ['README.md', 'args.yaml', 'config.json', 'model.safetensors', 'results.json']

_PUSH = """
import sys
from qpm_timm.hub import main
sys.exit(main({argv!r}))
"""

_DOWNLOAD = """
import json, torch, timm, qpm_timm
from huggingface_hub import HfApi
x = torch.load({input!r})
out = {{}}
for name in {names!r}:
    model = timm.create_model('hf-hub:' + name, pretrained=True).eval()
    with torch.no_grad():
        out[name] = model(x)
torch.save(out, {output!r})
card = HfApi().model_info({repo!r}).card_data
print(json.dumps([[r.metric_type, r.metric_value, r.dataset_type, r.dataset_split] for r in card.eval_results]))
"""


def _qpm(seed: int):
    torch.manual_seed(seed)
    model = qpm_timm.create_qpm('resnet10t', 6, **SLIM).eval()
    w = placeholder_assignment(6, 8, 3)[:, torch.randperm(8)]
    model.set_qpm_head(torch.randperm(128)[:8], w, torch.rand(128), torch.rand(128) + 0.5)
    return model


@pytest.fixture
def experiment(tmp_path):
    """A train.py experiment folder: export/, args.yaml, results.json."""
    exp = tmp_path / 'qpm_resnet10t-concepts'
    model = _qpm(0)
    hub.save_pretrained(model, exp / 'export', label_names=[f'set {i}' for i in range(6)])
    (exp / 'args.yaml').write_text(yaml.safe_dump(dict(dataset='concepts', val_split='val', model='qpm')))
    (exp / 'results.json').write_text(json.dumps(dict(top1=99.75, top5=100.0, objective=12.5,
                                                      solver_status='OPTIMAL', concept_recovery=0.973)))
    return exp, model


def test_dry_run_lists_files_and_target_and_makes_no_request(tmp_path, hub_server, experiment):
    exp, _ = experiment
    out = hub_server.run_python(_PUSH.format(argv=['push', str(exp), '--repo-id', REPO, '--dry-run']),
                                hf_home=tmp_path / 'hf_home')
    assert f'dry run, would push to {hub_server.endpoint}/{REPO} (revision main, public):' in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == FILES
    assert hub_server.requests == [] and not hub_server.has_repo(REPO)


def test_push_then_download_gives_the_same_model_with_its_card_and_run_files(tmp_path, hub_server, experiment):
    exp, model = experiment
    validate = tmp_path / 'validate.json'
    validate.write_text(json.dumps(dict(model='local-dir:export', top1=99.5, top5=100.0, sid_at_5=0.91)))
    hf_home = tmp_path / 'hf_home'
    out = hub_server.run_python(_PUSH.format(argv=['push', str(exp), '--repo-id', REPO, '--private',
                                                   '--results', str(validate)]), hf_home=hf_home)
    assert out.startswith(f'pushed to {hub_server.endpoint}/{REPO} (revision main, private): ')
    [commit] = hub_server.commits
    assert sorted(commit.paths) == sorted(FILES + ['validate_results.json']) and hub_server.is_private(REPO)
    files = hub_server.snapshot(REPO).files
    for name in ('model.safetensors', 'config.json'):
        assert files[name].local_path.read_bytes() == (exp / 'export' / name).read_bytes()
    for name in ('args.yaml', 'results.json'):
        assert files[name].local_path.read_bytes() == (exp / name).read_bytes()
    card = files['README.md'].local_path.read_text()
    assert f"timm.create_model('hf-hub:{REPO}', pretrained=True)" in card and 'local-dir:' not in card
    assert '| concept_recovery | 0.973 | results.json (train.py), concepts val split |' in card
    assert '| sid_at_5 | 0.91 | validate.py, concepts |' in card

    # a second push, of a QPMModel (exported on the way), to a new branch of the same repository
    other = _qpm(1)
    plan = hub.push_to_hub(other, REPO, revision='v2', dry_run=True)
    assert (plan.revision, sorted(plan.files)) == ('v2', ['README.md', 'config.json', 'model.safetensors'])
    hub.save_pretrained(other, tmp_path / 'other')
    hub_server.run_python(f'import timm, qpm_timm\n'
                          f'model = timm.create_model("local-dir:{tmp_path / "other"}", pretrained=True)\n'
                          f'qpm_timm.hub.push_to_hub(model, {REPO!r}, revision="v2")', hf_home=hf_home)
    assert [c.revision for c in hub_server.commits] == ['main', 'v2']

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / 'x.pt')
    evals = json.loads(hub_server.run_python(_DOWNLOAD.format(
        input=str(tmp_path / 'x.pt'), output=str(tmp_path / 'out.pt'), names=[REPO, REPO + '@v2'], repo=REPO),
        hf_home=tmp_path / 'fresh_home'))
    got = torch.load(tmp_path / 'out.pt')
    with torch.no_grad():
        assert torch.equal(got[REPO], model(x)) and torch.equal(got[REPO + '@v2'], other(x))
    assert evals == [['accuracy', 99.75, 'concepts', 'val'], ['accuracy', 100.0, 'concepts', 'val'],
                     ['accuracy', 99.5, 'concepts', None], ['accuracy', 100.0, 'concepts', None]]


def test_results_of_a_variant_export_without_args_yaml_are_reported_on_the_variant_dataset(tmp_path):
    """A converted release pushed with validate.py results: model-index on the dataset the variant is named after."""
    from huggingface_hub import ModelCard
    hub.save_pretrained(timm.create_model('qpm_resnet18_cub'), tmp_path / 'release')
    (tmp_path / 'validate.json').write_text(json.dumps(dict(top1=81.5, top5=94.0)))
    plan = hub.push_to_hub(tmp_path / 'release', 'qpm-timm/qpm_resnet18_cub', dry_run=True,
                           validate_results=str(tmp_path / 'validate.json'))
    assert sorted(plan.files) == ['README.md', 'config.json', 'model.safetensors', 'validate_results.json']
    evals = ModelCard(plan.card).data.eval_results
    assert [(r.dataset_name, r.metric_value) for r in evals] == [('CUB-200-2011', 81.5), ('CUB-200-2011', 94.0)]


@pytest.mark.parametrize('argv, message', [
    (['push', '{tmp}/missing', '--repo-id', REPO], 'does not exist or is not a folder'),
    (['push', '{tmp}', '--repo-id', REPO], 'is neither an export (model.safetensors + config.json) nor a train.py'),
    (['push', '{exp}', '--repo-id', 'no-namespace'], "--repo-id must be ORG/NAME"),
    (['push', '{exp}', '--repo-id', REPO, '--results', '{tmp}/none.json'], 'none.json does not exist'),
])
def test_push_refuses_bad_input_with_exit_code_2(tmp_path, experiment, capsys, argv, message):
    exp, _ = experiment
    argv = [a.format(tmp=tmp_path, exp=exp) for a in argv]
    assert hub.main(argv) == 2
    assert message in capsys.readouterr().err
