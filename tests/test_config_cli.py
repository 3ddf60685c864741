"""Strict configs, overrides, and a CLI that answers fast."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from medtune.cli import main
from medtune.config import dump_config, load_config
from medtune.errors import ConfigError

LORA = str(ROOT / "configs/tiny/sft_lora.yaml")


def test_overrides_are_typed_and_nested():
    cfg = load_config(LORA, ["train.learning_rate=5e-5", "data.datasets=[a, b]", "finetune.lora.r=4",
                             "model.adapters=[]", "generation.do_sample=true"])
    assert cfg.train["learning_rate"] == 5e-5 and cfg.data.datasets == ["a", "b"]
    assert cfg.finetune.lora.r == 4 and cfg.generation.do_sample is True
    assert cfg.finetune.lora.alpha == 16  # untouched values stay as in the file


@pytest.mark.parametrize("override, message", [
    ("data.dataset=[x]", "Unknown config key 'data.dataset'. Did you mean 'data.datasets'?"),
    ("finetune.lora.rank=4", "Unknown config key 'finetune.lora.rank'. Did you mean 'finetune.lora.r'?"),
    ("modle.template=chatml", "Unknown config key 'modle'. Did you mean 'model'?"),
    ("data.max_length=long", "data.max_length must be an integer; got 'long'"),
    ("generation.do_sample=maybe", "generation.do_sample must be true or false"),
    ("train.learning_rate", "must look like section.key=value"),
])
def test_bad_config_is_explained(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(LORA, [override])
    assert message in str(e.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(LORA, ["train.learning_rate=5e-5"])
    path = dump_config(cfg, tmp_path)
    again = load_config(path)
    assert again.train == cfg.train and again.finetune == cfg.finetune and again.data == cfg.data
    assert yaml.safe_load(path.read_text())["model"]["template"] == "chatml"


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from medtune.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "main(['ls', 'stages']); main(['ls', 'methods']); main(['ls', 'formats']); main(['ls', 'tasks'])\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for listed in ("prepare", "sft", "lora", "cmedqa2", "general_zh"):
        assert listed in out.stdout


def test_ls(capsys):
    for kind in ("templates", "formats", "datasets", "stages", "methods"):
        assert main(["ls", kind]) == 0
    out = capsys.readouterr().out
    for name in ("chatml", "gemma", "medical", "toyhom", "cmedqa2", "toyhom_neike_sample", "sft", "lora", "full"):
        assert name in out


def test_validate(capsys):
    assert main(["validate", LORA]) == 0
    assert "OK (sft/lora, template chatml, 1 dataset(s))" in capsys.readouterr().out
    assert main(["validate", LORA, "data.datasets=[toyhom_neik_sample]"]) == 2
    assert "Did you mean 'toyhom_neike_sample'?" in capsys.readouterr().err
    assert main(["validate", LORA, "finetune.method=lorra"]) == 2
    assert "Unknown method 'lorra'. Did you mean 'lora'?" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["train", "nope.yaml"]) == 2
    assert "Config file 'nope.yaml' does not exist." in capsys.readouterr().err
