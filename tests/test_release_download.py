"""Loading releases by name from a local HTTP server on 127.0.0.1: cache fill and reuse, no_cache, truncated and
wrong-hash downloads, concurrent processes, an unreachable server, and continued pretraining from a release."""

import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import small_config
from deberta_pretrain.deberta import GPT2Tokenizer, MaskedLanguageModel, ModelConfig
from deberta_pretrain.deberta.download import DownloadError
from deberta_pretrain.deberta.gpt2_vocab import build_bpe_encoder


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves ``files`` under ``/{name}/{file}``; counts GET requests; ``truncate`` cuts bodies short."""

    def __init__(self, files: dict):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.requests, self.truncate, self.lock = files, [], False, threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{{name}}/{{file}}"

    def count(self, file: str) -> int:
        return sum(1 for r in self.requests if r.endswith("/" + file))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        with self.server.lock:
            self.server.requests.append(self.path)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.truncate else body)
        if self.server.truncate:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def release():
    """A small v1 MLM 'base' release: weights, config.json and bpe_encoder.bin."""
    torch.manual_seed(0)
    config = ModelConfig.from_dict(small_config("v1", vocab_size=50265))
    model = MaskedLanguageModel(config).eval()
    weights, vocab = io.BytesIO(), io.BytesIO()
    torch.save(model.state_dict(), weights)
    torch.save(build_bpe_encoder(), vocab)
    files = {"deberta-base/pytorch_model.bin": weights.getvalue(),
             "deberta-base/config.json": config.to_json_string().encode(),
             "deberta-base/bpe_encoder.bin": vocab.getvalue()}
    return model, files


@pytest.fixture
def hub(release, monkeypatch):
    server = FakeHub(release[1])
    monkeypatch.setenv("DEBERTA_RELEASE_URL", server.template)
    monkeypatch.setenv("DEBERTA_DOWNLOAD_RETRIES", "0")
    yield server
    server.shutdown()


def outputs(model):
    ids = torch.tensor([[1, 500, 600, 700, 2]])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids))["logits"]


def test_load_by_name_fills_the_cache_and_reuses_it(release, hub, tmp_path):
    reference, files = release
    loaded = MaskedLanguageModel.load_model("base", cache_dir=tmp_path, strict=True).eval()
    assert torch.equal(outputs(loaded), outputs(reference))
    folder = tmp_path / "latest" / "deberta-base"
    assert sorted(os.listdir(folder)) == [".cache.json", ".lock", "model_config.json", "pytorch_model.bin"]
    record = json.load(open(folder / ".cache.json"))
    assert record["pytorch_model.bin"]["sha256"] == hashlib.sha256(files["deberta-base/pytorch_model.bin"]).hexdigest()
    assert hub.count("pytorch_model.bin") == 1 and hub.count("config.json") == 1
    MaskedLanguageModel.load_model("base", cache_dir=tmp_path)
    assert len(hub.requests) == 2  # the second load made no request
    # A cached file altered on disk is noticed and fetched again.
    (folder / "pytorch_model.bin").write_bytes(b"x" * os.path.getsize(folder / "pytorch_model.bin"))
    MaskedLanguageModel.load_model("deberta-base", cache_dir=tmp_path)
    assert hub.count("pytorch_model.bin") == 2
    # The vocabulary by release name.
    from deberta_pretrain.deberta.release import resolve_vocab_path

    vocab = resolve_vocab_path("base", cache_dir=tmp_path)
    tokenizer = GPT2Tokenizer(vocab)
    assert tokenizer.tokenize("Hello world!") == ["15496", "995", "0"] and tokenizer.mask_token_id == 50264


def test_no_cache_leaves_no_cache_entry(release, hub, tmp_path):
    loaded = MaskedLanguageModel.load_model("base", no_cache=True, cache_dir=tmp_path / "cache").eval()
    assert torch.equal(outputs(loaded), outputs(release[0]))
    assert not (tmp_path / "cache").exists()


def test_truncated_or_wrong_hash_downloads_leave_the_cache_as_it_was(release, hub, tmp_path):
    hub.truncate = True
    with pytest.raises(DownloadError, match="deberta-base/pytorch_model.bin"):
        MaskedLanguageModel.load_model("base", cache_dir=tmp_path)
    folder = tmp_path / "latest" / "deberta-base"
    assert not (folder / "pytorch_model.bin").exists() and not (folder / ".cache.json").exists()
    assert os.listdir(folder) == [".lock"]  # no partial download left beside it
    hub.truncate = False
    with pytest.raises(DownloadError, match="sha256"):
        MaskedLanguageModel.load_model("base", cache_dir=tmp_path, sha256={"pytorch_model.bin": "0" * 64})
    assert not (folder / "pytorch_model.bin").exists()
    good = hashlib.sha256(release[1]["deberta-base/pytorch_model.bin"]).hexdigest()
    MaskedLanguageModel.load_model("base", cache_dir=tmp_path, sha256={"pytorch_model.bin": good})
    assert (folder / "pytorch_model.bin").exists()


LOAD_SNIPPET = """
import sys
from deberta_pretrain.deberta import MaskedLanguageModel
print(MaskedLanguageModel.load_model("base", cache_dir=sys.argv[1]).num_parameters())
"""


def test_four_processes_at_once_cause_one_download(release, hub, tmp_path):
    children = [subprocess.Popen([sys.executable, "-c", LOAD_SNIPPET, str(tmp_path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [child.communicate(timeout=180) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err[-3000:]
        assert int(out.split()[-1]) == release[0].num_parameters()
    assert hub.count("pytorch_model.bin") == 1 and hub.count("config.json") == 1


def test_unreachable_server_is_a_clear_error_within_the_timeout(monkeypatch, tmp_path):
    silent = socket.socket()  # accepts connections into its backlog and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    monkeypatch.setenv("DEBERTA_RELEASE_URL", f"http://127.0.0.1:{port}/{{name}}/{{file}}")
    monkeypatch.setenv("DEBERTA_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("DEBERTA_DOWNLOAD_RETRIES", "1")
    start = time.perf_counter()
    with pytest.raises(DownloadError) as error:
        MaskedLanguageModel.load_model("large", cache_dir=tmp_path)
    assert time.perf_counter() - start < 15
    message = str(error.value)
    assert f"http://127.0.0.1:{port}/deberta-large/pytorch_model.bin" in message
    assert "local directory" in message
    silent.close()


def test_unknown_names_and_spm_vocabularies_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="'basee' is neither"):
        MaskedLanguageModel.load_model("basee", cache_dir=tmp_path)
    from deberta_pretrain.deberta.release import resolve_vocab_path

    with pytest.raises(ValueError, match="SentencePiece"):
        resolve_vocab_path("deberta-v3-base", cache_dir=tmp_path, kind="gpt2")
    with pytest.raises(ValueError, match="SentencePiece"):
        GPT2Tokenizer("deberta-v3-base")


def test_a_v3_release_name_brings_its_spm_vocabulary(monkeypatch, tmp_path):
    """deberta-v3-* by name: weights, config.json and spm.model from the (local) hub; data prep's tokenizer and
    continued pretraining's vocabulary check both use the spm.model, and GPT-2 data is refused naming both."""
    from conftest import train_spm
    from deberta_pretrain.deberta.vocabulary import load_tokenizer, vocab_identity
    from deberta_pretrain.training.initial_weights import load_initial_weights

    spm_file = train_spm(tmp_path / "spm.model", vocab_size=1000)
    config = ModelConfig.from_dict(small_config("v3", vocab_size=1001))
    torch.manual_seed(0)
    weights = io.BytesIO()
    torch.save(MaskedLanguageModel(config).state_dict(), weights)
    server = FakeHub({"deberta-v3-base/pytorch_model.bin": weights.getvalue(),
                      "deberta-v3-base/config.json": config.to_json_string().encode(),
                      "deberta-v3-base/spm.model": spm_file.read_bytes()})
    monkeypatch.setenv("DEBERTA_RELEASE_URL", server.template)
    monkeypatch.setenv("DEBERTA_DOWNLOAD_RETRIES", "0")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default release cache lives under ~
    try:
        tokenizer = load_tokenizer("deberta-v3-base")
        assert type(tokenizer).__name__ == "SPMTokenizer" and tokenizer.mask_token_id == 1000
        assert (tmp_path / "home" / ".~DeBERTa" / "assets" / "latest" / "deberta-v3-base" / "spm.model").is_file()
        state, merged = load_initial_weights("deberta-v3-base", ModelConfig.from_dict(small_config("v3")),
                                             vocab_identity(tokenizer))
        assert merged.vocab_size == 1001 and "deberta.embeddings.word_embeddings.weight" in state
        with pytest.raises(ValueError, match="deberta-v3-base was trained with the vocabulary .*spm.model"):
            load_initial_weights("deberta-v3-base", config, vocab_identity(GPT2Tokenizer()))
        assert server.count("spm.model") == 1  # the vocabulary is cached, not fetched again
    finally:
        server.shutdown()
