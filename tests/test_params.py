"""Params: defaults load, extends + overrides work, each kind of bad input names its key."""
from pathlib import Path

import pytest

from cardlib.params import ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default", "smoke", "scans", "sagemaker"])
def test_shipped_params_load(name):
    p = load_params(REPO / "params" / f"{name}.yaml")
    assert p.run.name == name


def test_sagemaker_params_match_the_seed_project():
    p = load_params(REPO / "params" / "sagemaker.yaml")
    assert p.store.uri == "s3://pokemon-card-training-us-east-2/project/pokemon-card-recognition"
    assert p.store.region == "us-east-2"
    assert p.teacher.preset == "dinov3-vitl16" and p.teacher.embed_dim == 768
    assert p.compute.backend == "sagemaker" and p.compute.instance_count >= 1
    assert p.compute.instance_type in p.compute.price_per_hour


def test_extends_merges_sections(tmp_path):
    (tmp_path / "base.yaml").write_text("teacher: {epochs: 5, lr: 0.01}\ndata: {n_cards: 50}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nteacher: {epochs: 2}\n")
    p = load_params(tmp_path / "child.yaml")
    assert (p.teacher.epochs, p.teacher.lr, p.data.n_cards) == (2, 0.01, 50)


def test_extends_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params(tmp_path / "a.yaml")


def test_overrides_are_coerced_from_yaml_text():
    p = load_params(REPO / "params" / "default.yaml",
                    ["teacher.epochs=3", "teacher.bf16=true", "teacher.lr=2e-4", "data.input_size=[64, 48]",
                     "store.uri=s3://some-bucket/x"])
    assert p.teacher.epochs == 3 and p.teacher.bf16 is True and p.teacher.lr == 2e-4
    assert p.data.input_size == [64, 48] and p.store.uri == "s3://some-bucket/x"


@pytest.mark.parametrize("override, key, hint", [
    ("teacher.epochz=3", "teacher.epochz", "allowed: "),          # unknown key, with the allowed ones
    ("nonsense.x=1", "nonsense", "allowed: "),                    # unknown section
    ("teacher.epochs=three", "teacher.epochs", "valid integer"),  # wrong type
    ("teacher.epochs=0", "teacher.epochs", "greater than or equal to 1"),  # out of range
    ("hailo.hw_arch=hailo15", "hailo.hw_arch", "'hailo8' or 'hailo8l'"),  # not one of the allowed values
    ("teacher.bf16=maybe", "teacher.bf16", "valid boolean"),
    ("data.input_size=[64]", "data.input_size", "[height, width]"),
    ("distill.stage2.lr=-1", "distill.stage2.lr", "greater than 0"),
    ("run.name=../evil", "run.name", "pattern"),
])
def test_bad_values_name_the_key(override, key, hint):
    with pytest.raises(ParamsError) as e:
        load_params(REPO / "params" / "default.yaml", [override])
    msg = str(e.value)
    assert key in msg and hint in msg, msg


def test_scans_source_needs_a_folder():
    with pytest.raises(ParamsError, match="scans_dir"):
        load_params(None, ["data.source=scans"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="key.path=value"):
        load_params(None, ["teacher.epochs"])
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
