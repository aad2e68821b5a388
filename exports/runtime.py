"""Opening an export directory without PyTorch: the manifest checked, its runtime found, its sessions opened.

    model = lmkit.exports.load("exp/m0")       # = lmkit.open_model("exp/m0"): checks names and hashes
    model.generate(["The cat"], max_new_tokens=20)
    backend = model.backend()                  # for lmkit.decoding's strategies, as TorchBackend is

Loading checks the directory before onnxruntime reads anything from it (see manifest.py): names
that leave the directory, files whose hash changed and external data that the manifest does not
list are refused, each in one line. The manifest's architecture names the runtime that runs it,
looked up among those registered through the register_export_runtimes hook (lmkit.builtins
registers decoder-only, encoder-only and encoder-decoder); the runtime then opens the graphs it runs.
"""
from __future__ import annotations

import os
import posixpath

from lmkit.errors import ArtifactError
from lmkit.opening import OpenedModel
from lmkit.token_inputs import check as check_token_inputs

from .manifest import check_graphs, read_manifest, safe_path, verify_files
from .providers import _check_one_runtime, _onnxruntime, open_session, providers_for


class ExportDirectory:
    """An export directory, checked: its manifest, tokenizers, and its graphs' sessions opened on demand.

    What an ExportRuntime is built from (lmkit.contract.ExportRuntime): `session(name)` opens one
    graph on the providers asked for, once.
    """

    def __init__(self, directory: str, device: str = "auto", provider: str | None = None, session_options=None):
        self.directory = directory
        self.manifest = read_manifest(directory)
        _onnxruntime()
        self.device, self.provider, self.session_options = device, provider, session_options
        self.wanted = providers_for(device, provider)  # before reading the graphs: a wrong provider fails fast
        verify_files(directory, self.manifest)
        self.opsets = check_graphs(directory, self.manifest)
        _check_one_runtime()
        self.sessions: dict = {}
        self.providers: list[str] | None = None  # what runs the sessions, once one is open

    @property
    def architecture(self) -> str:
        return self.manifest.get("architecture")

    def session(self, name: str):
        """The onnxruntime session of graph `name`, opened the first time it is asked for."""
        if name not in self.sessions:
            graphs = self.manifest["graphs"]
            if name not in graphs:
                raise ArtifactError(f"{self.directory}: a {self.architecture} export has a graph '{name}'; this one "
                                    f"has {', '.join(graphs)}")
            session = open_session(self.directory, self.manifest, name, self.opsets.get(name, {}), self.wanted,
                                   self.device, self.provider, self.session_options)
            self.sessions[name] = session
            self.providers = self.providers or session.get_providers()
        return self.sessions[name]

    def tokenizer(self, key: str = "tokenizer"):
        """The tokenizer the manifest names under `key` (tokenizer, target_tokenizer), or None; hashed or refused."""
        return read_tokenizer(self.directory, self.manifest, key)


def read_tokenizer(directory: str, manifest: dict, key: str = "tokenizer"):
    """The tokenizer file the manifest names under `key`, with its special-token config, both hashed; or None."""
    if not manifest.get(key):
        return None
    from lmkit.tokenizers import TOKENIZER_CONFIG, load_tokenizer

    name = manifest[key]
    if name not in manifest["files"]:
        raise ArtifactError(f"{directory}: the {key.replace('_', ' ')} {name!r} is not listed with a hash in the "
                            "manifest; refusing to load it")
    path = safe_path(directory, name, f"the {key.replace('_', ' ')} file")
    # The tokenizer reads the special-token roles from the config beside it: hashed, or refused.
    config = posixpath.join(posixpath.dirname(name), TOKENIZER_CONFIG)
    if os.path.exists(os.path.join(os.path.dirname(path), TOKENIZER_CONFIG)) and config not in manifest["files"]:
        raise ArtifactError(f"{directory}: {config} is not listed with a hash in the manifest; refusing to load it")
    return load_tokenizer(path)


def find_runtime(architecture: str, directory: str, host=None) -> type:
    """The ExportRuntime class registered under `architecture`; a one-line error naming what is installed."""
    from lmkit.registry import get_host

    host = host or get_host()
    runtimes = host.components["export-runtime"]
    if architecture not in runtimes:
        raise ArtifactError(f"{directory} is a '{architecture}' export, which no installed export runtime serves "
                            f"(installed: {', '.join(sorted(runtimes)) or 'none'}); install the plugin that made it, "
                            "which registers its runtime with the register_export_runtimes hook")
    return host.component("export-runtime", architecture).load()


class ExportedModel(OpenedModel):
    """An export directory opened on onnxruntime: what lmkit.open_model gives for one, plus the export's own
    manifest, architecture and providers.

    device: auto (CUDA when this onnxruntime has it, else the CPU), cpu, cuda or cuda:N; or
    provider: one onnxruntime execution provider by name (CUDAExecutionProvider, ...), which must
    then be the one that runs the graphs. session_options: an onnxruntime.SessionOptions (threads).
    """

    def __init__(self, directory: str, device: str = "auto", provider: str | None = None, session_options=None):
        from lmkit.registry import check_components, get_host

        export = ExportDirectory(directory, device, provider, session_options)
        runtime = find_runtime(export.architecture, directory)(export)
        manifest = export.manifest
        # Its decoding strategy may be a plugin's: name the plugin to install, as a model directory does (a trial
        # got "unknown decoding 'second-best'", and lmkit serve decoded greedily without a word).
        check_components(manifest.get("source") or {}, directory, get_host(), kinds={"decoding"})
        super().__init__(directory, runtime, tokenizer=export.tokenizer(),
                         target_tokenizer=export.tokenizer("target_tokenizer"), generation=manifest["generation"],
                         decoder_start=manifest.get("special_tokens", {}).get("decoder_start"),
                         decoder_type=(((manifest.get("source") or {}).get("spec") or {}).get("decoder") or {}).get("type"),
                         token_inputs=check_token_inputs((manifest.get("dimensions") or {}).get("token_inputs"),
                                                         directory),
                         source_suffix=manifest.get("source_suffix", ()),
                         spec=(manifest.get("source") or {}).get("spec") or {})
        self.export = export
        self.manifest = manifest
        self.architecture = export.architecture

    def __repr__(self) -> str:
        return f"ExportedModel({self.directory!r}, dtype={self.manifest['dtype']}, providers={self.providers})"

    @property
    def providers(self) -> list[str] | None:
        """The execution providers that run the graphs, as onnxruntime reports them."""
        return self.export.providers

    @property
    def max_length(self) -> int | None:
        """The most positions the graph reads (max_positions under its export name)."""
        return self.max_positions


def load(directory: str, device: str = "auto", provider: str | None = None, session_options=None) -> ExportedModel:
    """Open an export directory written by `lmkit export`; see ExportedModel for the arguments."""
    return ExportedModel(directory, device, provider, session_options)
