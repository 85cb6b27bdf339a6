"""atomic_write: the target is the old file or the complete new one, and no temporary file is left behind."""
import pytest

from qpm_timm.atomic import atomic_write


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'results.json'
    with atomic_write(target) as fh:
        fh.write('good')
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write('half')
            raise RuntimeError('interrupted')
    assert target.read_text() == 'good'
    assert [p.name for p in tmp_path.iterdir()] == ['results.json']


def test_binary_mode_replaces_the_file_completely(tmp_path):
    target = tmp_path / 'stats.npz'
    target.write_bytes(b'old and longer')
    with atomic_write(target, 'wb') as fh:
        fh.write(b'new')
    assert target.read_bytes() == b'new'
