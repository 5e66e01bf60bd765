"""Config: every numeric field has a declared range, checked up front; devices are not more than the
machine has; duplicate YAML keys and undecodable YAML files are clear errors naming the file."""
import pytest

from train import config as C
from train import pretrain


def numeric_fields():
    return list(C._numeric_fields(C.Config()))


def test_every_numeric_field_has_a_declared_range():
    undeclared = [k for k, _ in numeric_fields() if not k.startswith("hex.") and C.range_of(k) is None]
    assert not undeclared, f"declare a range in train/config.py RANGES / METHOD_RANGES for {undeclared}"


@pytest.mark.parametrize("key,value", numeric_fields())
def test_every_numeric_field_refuses_an_absurd_value(key, value):
    """-1e9 is outside every field's range (hex fields included, checked by hexfast.validate)."""
    bad = [-1e9, 0.5] if isinstance(value, tuple) else (-10 ** 9 if isinstance(value, int) else -1e9)
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        C.from_dict(C.nested(key, bad))


@pytest.mark.parametrize("key,value,words", [
    ("eval.knn_temperature", 0, "eval.knn_temperature must be > 0, got 0"),
    ("eval.knn_k", 0, "eval.knn_k must be >= 1"),
    ("eval.max_bank", 5, "eval.max_bank (5) must be 0 (the whole train split) or >= eval.knn_k (20)"),
    ("train.checkpoint_every_steps", -1, "train.checkpoint_every_steps must be >= 0"),
    ("train.log_every_steps", 0, "train.log_every_steps must be >= 1"),
    ("train.seed", 2 ** 32, "train.seed must be in [0, 4294967296), got 4294967296"),
    ("train.seed", -1, "train.seed must be in [0, 4294967296)"),
    ("train.max_steps", 0, "train.max_steps must be -1 or >= 1, got 0"),
    ("model.tiny_width", 0, "model.tiny_width must be >= 1"),
    ("simclr.proj_output_dim", 0, "simclr.proj_output_dim must be >= 1"),
    ("byol.momentum", 1.5, "byol.momentum must be in [0, 1], got 1.5"),
    ("optim.adamw_betas", [0.9, 1.0], "optim.adamw_betas must be in [0, 1), got (0.9, 1.0)"),
    ("optim.momentum", 1.0, "optim.momentum must be in [0, 1)"),
    ("hex.warmup_eps", 1.5, "hex.warmup_eps"),
    ("hex.warmup_eps", -1.01, "hex.warmup_eps"),
])
def test_range_errors_name_the_key_and_the_range(key, value, words):
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(C.nested(key, value))
    assert words in str(e.value)


@pytest.mark.parametrize("key,value", [
    ("train.seed", 2 ** 32 - 1), ("train.seed", 0), ("hex.warmup_eps", -1.0), ("hex.warmup_eps", 1.0),
    ("eval.knn_temperature", 1e-3), ("eval.max_bank", 20), ("train.checkpoint_every_steps", 0),
    ("train.max_steps", -1), ("optim.min_lr_factor", 1.0),
])
def test_range_edges_are_accepted(key, value):
    C.from_dict(C.nested(key, value))


def test_devices_beyond_the_machine_are_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain.main(["--devices", "4096", "--batch-size", "8192", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.devices (4096) exceeds the" in err and "of this machine" in err
    assert not out.exists()


def test_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("method: simclr\nhex:\n  quantile: 0.9\n  mode: fixed\n  quantile: 0.5\n")
    with pytest.raises(C.ConfigError) as e:
        C.load_yaml(path)
    assert str(path) in str(e.value) and "duplicate key 'quantile' at line 5 (first given at line 3)" in str(e.value)
    path.write_text("method: simclr\nmethod: byol\n")
    assert pretrain.main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "duplicate key 'method' at line 2 (first given at line 1)" in capsys.readouterr().err
    with pytest.raises(C.ConfigError, match="duplicate key 'a'"):
        C.parse_override("simclr={a: 1, a: 2}")
    # a merge (<<) may still be overridden, as YAML defines
    assert C.parse_yaml("base: &b {x: 1}\nmine:\n  <<: *b\n  x: 2\n")["mine"] == {"x": 2}


@pytest.mark.parametrize("raw,words", [
    (b"hex:\n  mode: fix\xe9d\n", ["is not UTF-8 text", "byte 0xe9 at offset 16"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["is not UTF-8 text", "byte 0x89 at offset 0"]),
    (b"hex:\n  quantile: [0.9\n", ["invalid YAML"]),
    (b"- 1\n- 2\n", ["top level must be a mapping"]),
])
def test_undecodable_or_invalid_yaml_names_the_file(tmp_path, capsys, raw, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    assert pretrain.main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.count("error:") == 1
    for w in words:
        assert w in err, (w, err)


def test_saved_config_is_written_atomically(tmp_path, monkeypatch):
    """config.yaml is replaced in one step: a crash while writing leaves the old file whole."""
    path = tmp_path / "config.yaml"
    C.save_yaml(C.Config(), path)
    old = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(C.yaml, "safe_dump", crash)
    with pytest.raises(OSError):
        C.save_yaml(C.from_dict({"train": {"epochs": 3}}), path)
    assert path.read_bytes() == old
