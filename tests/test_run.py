"""The run layer the scripts share (qpm_timm/run): bad input vs code bugs, the dataset, the config file."""
import argparse
from types import SimpleNamespace

import pytest

from qpm_timm.run import UsageError, exit_code
from qpm_timm.run.args import parse_args_with_config
from qpm_timm.run.data import resolve_dataset


def _raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize('error', [UsageError('bad flag'), ValueError('bad size'), FileNotFoundError('no file')])
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(capsys, error):
    assert exit_code(_raising(error)) == 2
    assert capsys.readouterr().err == f'error: {error}\n'


@pytest.mark.parametrize('error', [TypeError('a bug'), AttributeError('a bug'), PermissionError('a machine fault')])
def test_a_code_bug_keeps_its_traceback(error):
    with pytest.raises(type(error)):
        exit_code(_raising(error))


def test_success_is_exit_code_0():
    assert exit_code(lambda argv: None) == 0


@pytest.mark.parametrize('data_dir, expected', [(None, 'concepts'), ('/data/tree', 'folder')])
def test_the_dataset_defaults_like_timm(data_dir, expected):
    args = SimpleNamespace(dataset=None, data_dir=data_dir, dataset_args=None)
    resolve_dataset(args)
    assert args.dataset == expected


def test_dataset_args_from_a_config_file_must_be_a_mapping():
    with pytest.raises(UsageError, match='--dataset-args must be a YAML mapping'):
        resolve_dataset(SimpleNamespace(dataset=None, data_dir=None, dataset_args=[1, 2]))


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch-size', type=int, default=16)
    return parser


def test_a_config_file_sets_defaults_the_command_line_overrides(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('batch_size: 64\n')
    assert parse_args_with_config(_parser(), ['-c', str(config)])[0].batch_size == 64
    args, text = parse_args_with_config(_parser(), ['-c', str(config), '--batch-size', '8'])
    assert args.batch_size == 8 and text == 'batch_size: 8\n'


@pytest.mark.parametrize('content, message', [('batch_sise: 8\n', "unknown keys ['batch_sise']"),
                                              ('[1, 2]\n', 'must be a YAML mapping'),
                                              ('a: [\n', 'is not valid YAML')])
def test_a_bad_config_file_is_refused_by_name(tmp_path, content, message):
    config = tmp_path / 'c.yaml'
    config.write_text(content)
    with pytest.raises(UsageError, match=message.replace('[', r'\[').replace(']', r'\]')):
        parse_args_with_config(_parser(), ['-c', str(config)])
