"""Specs: presets, TOML files and --set overrides, checked against each component's schema."""
import pytest

from lmkit.errors import SpecError
from lmkit.options import parse_value
from lmkit.registry import PluginHost
from lmkit.spec import apply_overrides, load_source, resolve


@pytest.fixture(scope="module")
def host():
    return PluginHost()


def resolved(host, source="gpt2-tiny", *sets):
    return resolve(apply_overrides(load_source(source, host), list(sets)), host)


def test_a_preset_resolves_to_checked_options(host):
    spec = resolved(host, "gpt-mini")
    assert spec.decoder.type == "gpt2"
    assert (spec.decoder.options.n_layers, spec.decoder.options.d_model, spec.decoder.options.n_heads) == (6, 384, 6)
    assert spec.decoder.options.vocab_size == 8192 and spec.decoder.options.max_positions == 256
    assert [(o.type, o.weight) for o in spec.objectives] == [("causal-lm", 1.0)]


def test_overrides_are_typed(host):
    spec = resolved(host, "gpt-mini", "decoder.n_layers=4", "decoder.layer_norm_eps=1e-6",
                    "objectives.causal-lm.weight=0.5", "tokenizer=tok/")
    assert spec.decoder.options.n_layers == 4
    assert spec.decoder.options.layer_norm_eps == 1e-6
    assert spec.objectives[0].weight == 0.5
    assert spec.tokenizer == {"path": "tok/"}


def test_parse_value_reads_toml_literals_and_falls_back_to_text():
    assert parse_value("4") == 4 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value('"4"') == "4"
    assert parse_value("tok/") == "tok/" and parse_value("gelu-tanh") == "gelu-tanh"


def test_to_dict_round_trips(host):
    spec = resolved(host, "gpt2-tiny", "decoder.n_layers=3")
    again = resolve(spec.to_dict(), host)
    assert again.to_dict() == spec.to_dict()


def test_a_toml_file_can_start_from_a_preset(host, tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('preset = "gpt2-tiny"\n[decoder]\nn_layers = 3\n')
    spec = resolve(load_source(str(path), host), host)
    assert spec.decoder.options.n_layers == 3 and spec.decoder.options.d_model == 64
    assert spec.name == "gpt2-tiny"


def test_a_full_toml_file(host, tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('[decoder]\ntype = "gpt2"\nn_layers = 1\nd_model = 32\nn_heads = 2\nvocab_size = 100\n'
                    'max_positions = 16\n[[objectives]]\ntype = "causal-lm"\nweight = 2.0\n')
    spec = resolve(load_source(str(path), host), host)
    assert spec.decoder.options.d_model == 32 and spec.objectives[0].weight == 2.0


@pytest.mark.parametrize("sets, message", [
    (["decoder.n_layr=4"], r"decoder: unknown option 'n_layr' \(did you mean 'n_layers'\?\); allowed: "),
    (["decoder.n_layers=four"], r"decoder.n_layers: 'four' is not an integer"),
    (["decoder.n_layers=2.5"], r"decoder.n_layers: 2.5 is not an integer"),
    (["decoder.activation=swish"], r"decoder.activation: 'swish' is not allowed; allowed: 'gelu-tanh'"),
    (["decoder.type=gtp2"], r"decoder.type: unknown decoder 'gtp2' \(did you mean 'gpt2'\?\)"),
    (["decoder.n_heads=5"], r"decoder: .*d_model.*n_heads"),
    (["objectives.causal-lm.weight=-1"], r"objectives\[0\].weight: -1 is not a non-negative number"),
    (["objectives.causal-lm.label_smothing=0.1"], r"did you mean 'label_smoothing'"),
    (["decodr.strategy=greedy"], r"--set decodr.strategy: unknown key 'decodr' \(did you mean 'decoder'\?\)"),
    (["n_layers"], r"--set 'n_layers': expected key=value"),
])
def test_bad_overrides_name_the_field_the_value_and_what_is_allowed(host, sets, message):
    with pytest.raises(SpecError, match=message) as error:
        resolved(host, "gpt2-tiny", *sets)
    assert "\n" not in str(error.value)


def test_unknown_preset_suggests_one(host):
    with pytest.raises(SpecError, match=r"'gpt-mni' is neither a preset nor a .toml file \(did you mean 'gpt-mini'\?\)"):
        load_source("gpt-mni", host)


def test_a_file_that_is_not_toml(host, tmp_path):
    path = tmp_path / "model.toml"
    path.write_text("[decoder\ntype = gpt2\n")
    with pytest.raises(SpecError, match=r"model.toml is not valid TOML: "):
        load_source(str(path), host)


def test_a_spec_needs_an_encoder_or_a_decoder(host):
    with pytest.raises(SpecError, match="needs an encoder or a decoder"):
        resolve({"objectives": [{"type": "causal-lm"}]}, host)


def test_unknown_top_level_key(host):
    with pytest.raises(SpecError, match=r"unknown spec key 'decoders' \(did you mean 'decoder'\?\)"):
        resolve({"decoders": {"type": "gpt2"}}, host)
