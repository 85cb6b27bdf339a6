"""The global (class -> feature table) and local (per-image evidence) explanations of a QPM."""
import pytest
import torch

import qpm_timm
from qpm_timm.explain import class_feature_table, explain, model_feature_table

ASSIGNMENT = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)


def _qpm():
    model = qpm_timm.create_qpm('resnet18', num_classes=3, n_features=4, n_per_class=2, head='dense')
    model.set_qpm_head(torch.tensor([7, 3, 500, 42]), ASSIGNMENT, torch.zeros(4), torch.ones(4))
    return model.eval()


def test_table_lists_every_class_its_features_and_how_many_classes_share_each():
    table = class_feature_table(ASSIGNMENT, ['a', 'b', 'c'], ['x', 'y', 'z', 'w'])
    assert '| a | x, y |' in table and '| b | y, z |' in table and '| c | z, w |' in table
    assert table.endswith('classes per feature: x: 1, y: 2, z: 2, w: 1')
    short = class_feature_table(ASSIGNMENT, max_rows=1)
    assert '| class 0 | f0, f1 |' in short and '| ... | (2 more classes) |' in short and 'class 1 |' not in short
    with pytest.raises(ValueError, match='need 3 class names and 4 feature names'):
        class_feature_table(ASSIGNMENT, ['a'])


def test_model_table_names_features_by_their_backbone_channel():
    table = model_feature_table(_qpm(), ['a', 'b', 'c'])
    assert '| a | f0 (ch 7), f1 (ch 3) |' in table and '| c | f2 (ch 500), f3 (ch 42) |' in table


def test_explanation_gives_the_predicted_class_features_whose_contributions_sum_to_its_logit():
    model = _qpm()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(images)
    for i, e in enumerate(explain(model, images)):
        assert e.predicted == int(logits[i].argmax())
        assert e.features == ASSIGNMENT[e.predicted].nonzero().flatten().tolist()
        assert sum(e.contributions) == pytest.approx(float(logits[i, e.predicted]), rel=1e-5, abs=1e-5)
        assert e.maps.shape[0] == 2


def test_explain_refuses_a_dense_model():
    with pytest.raises(ValueError, match='needs a QPM'):
        explain(qpm_timm.create_qpm('resnet18', num_classes=3, n_features=4, n_per_class=2, head='dense'),
                torch.randn(1, 3, 32, 32))
