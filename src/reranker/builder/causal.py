"""Causal-LM rerankers (Qwen3-Reranker, mxbai-rerank-v2, ...): what the builder reads from
such a checkpoint and the graph it exports.

sentence-transformers' ``CrossEncoder`` scores a pair with a causal LM by rendering it into
the model's chat template (the query and the document as messages of roles ``query`` and
``document``, an instruction as a ``system`` message), running the model and taking, at the
last position, the logit of the relevance token less that of the irrelevance token
(``LogitScore``: "yes" and "no" unless the checkpoint's own LogitScore module names others).
The builder cuts the rendered template at its slots once (:class:`PromptTemplate`), so the
tokenizer model can render any pair without Jinja, and exports a graph that returns that
logit difference for each row's last real token: one float per row leaves the encoder.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from reranker.backend.tokenization import PromptLayout, PromptTemplate
from reranker.builder.common import (
    BuildError,
    BuildOptions,
    architecture,
    max_length,
    read_json,
    step,
)
from reranker.contract.model import Activation, Device, ModelKind, Precision, Runtime, ServedModel
from reranker.contract.tensors import PREFIX_IDS

# Stand-ins for the slots while the template is rendered: characters no template writes.
_SLOTS = {
    "instruction": "\x00INSTRUCTION\x00",
    "query": "\x00QUERY\x00",
    "document": "\x00DOCUMENT\x00",
}
# What CrossEncoder's suffix derivation renders in place of the query and document.
_FILLERS = ("0", "1 2 3 4")
_PLACEHOLDER_INSTRUCTION = "Judge the relevance of the document to the query"


def relevance_tokens(source: Path, tokenizer: Any) -> tuple[int, int]:
    """The (relevant, irrelevant) token ids the score reads: the checkpoint's own
    sentence-transformers LogitScore module where it has one, else "yes" and "no"."""
    modules = _read_json_list(source / "modules.json")
    for entry in modules:
        if str(entry.get("type", "")).endswith("LogitScore"):
            settings = read_json(source / str(entry.get("path", "")) / "config.json")
            true_id, false_id = settings.get("true_token_id"), settings.get("false_token_id")
            if not isinstance(true_id, int) or not isinstance(false_id, int):
                raise BuildError(
                    f"{source}: its LogitScore module must name both true_token_id and "
                    f"false_token_id to be served (got {true_id!r}, {false_id!r})"
                )
            return true_id, false_id
    ids = []
    for word in ("yes", "no"):
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise BuildError(
                f"{source} is a causal LM whose tokenizer has no {word!r} token and whose "
                "checkpoint has no sentence-transformers LogitScore module naming the tokens "
                "to score: add one (modules.json) with true_token_id and false_token_id"
            )
        ids.append(int(token_id))
    return ids[0], ids[1]


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text()) if path.is_file() else []
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def prompt_template(tokenizer: Any) -> PromptTemplate | None:
    """The model's chat template cut at its slots, as CrossEncoder renders a pair: without an
    instruction, and with one (a system message) where the template has a place for it. None
    for a model without a chat template: CrossEncoder then tokenizes the pair as a text pair
    (the tokenizer's own pair layout, truncated longest first) and reads the last token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    pair = [
        {"role": "query", "content": _SLOTS["query"]},
        {"role": "document", "content": _SLOTS["document"]},
    ]
    default = _layout(tokenizer, pair, ("query", "document"))
    system = [{"role": "system", "content": _SLOTS["instruction"]}]
    rendered = tokenizer.apply_chat_template(system + pair, tokenize=False)
    instructed = None
    if _SLOTS["instruction"] in rendered:
        instructed = _layout(tokenizer, system + pair, ("instruction", "query", "document"))
    return PromptTemplate(default, instructed)


def _layout(tokenizer: Any, messages: list[dict[str, str]], slots: tuple[str, ...]) -> PromptLayout:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    for slot in slots:
        if rendered.count(_SLOTS[slot]) != 1:
            raise BuildError(
                f"the chat template must render the {slot} exactly once; it renders it "
                f"{rendered.count(_SLOTS[slot])} times"
            )
    pattern = "|".join(re.escape(_SLOTS[s]) for s in slots)
    found = [next(s for s in slots if _SLOTS[s] == m) for m in re.findall(pattern, rendered)]
    texts = tuple(re.split(pattern, rendered))
    layout = PromptLayout(tuple(found), texts, ())
    return replace(layout, suffix_ids=tuple(_suffix_ids(tokenizer, layout)))


def _suffix_ids(tokenizer: Any, layout: PromptLayout) -> list[int]:
    """The prompt's closing tokens as CrossEncoder finds them: the longest common token tail
    of two renders whose query and document are different fillers."""
    backend = tokenizer.backend_tokenizer
    renders = []
    for filler in _FILLERS:
        values = {"query": filler, "document": filler, "instruction": _PLACEHOLDER_INSTRUCTION}
        renders.append(backend.encode(layout.render(values), add_special_tokens=False).ids)
    first, second = renders
    count = 0
    for left, right in zip(reversed(first), reversed(second), strict=False):
        if left != right:
            break
        count += 1
    return first[len(first) - count :] if 0 < count < min(len(first), len(second)) else []


def reference_scores(network: Any, feeds: dict[str, Any], true_id: int, false_id: int) -> Any:
    """What LogitScore computes, from the full vocabulary logits at each row's last token."""
    import torch

    with torch.no_grad():
        logits = network(**feeds).logits
        last = feeds["attention_mask"].sum(dim=1) - 1
        final = logits[torch.arange(logits.shape[0]), last]
        return (final[:, true_id] - final[:, false_id]).unsqueeze(-1)


def build_causal_lm(
    source: Path, config: dict[str, Any], options: BuildOptions, repository: Path
) -> ServedModel:
    """Builds a causal-LM reranker: its prompt, its relevance tokens and the exported graph
    of their logit difference, checked against the checkpoint's own logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.backend.scorers import relevance_scorer
    from reranker.builder.install import install, install_checkpoint, pair_tokenizer

    name = architecture(config, "")
    options = _causal_options(name, config, options)
    with step(f"loading causal LM {source}"):
        hf_tokenizer = AutoTokenizer.from_pretrained(source)
        network = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    true_id, false_id = relevance_tokens(source, hf_tokenizer)
    prompt = prompt_template(hf_tokenizer)
    model = ServedModel(
        name=options.name,
        kind=ModelKind.CAUSAL_LM,
        architecture=name,
        max_length=max_length(options, source),
        activation=Activation.SIGMOID,
        token_inputs=("input_ids", "attention_mask"),
        max_batch_size=options.max_batch_size,
        family=str(config.get("model_type", "")),
        takes_instruction=prompt is not None and prompt.takes_instruction,
        relevance_tokens=(true_id, false_id),
        templated=prompt is not None,
    )
    _print_relevance(hf_tokenizer, model, prompt is not None)
    tokenizer = hf_tokenizer.backend_tokenizer

    def reference(feeds: dict[str, Any]) -> Any:
        return reference_scores(network, feeds, true_id, false_id)

    if options.runtime is Runtime.TORCH:
        return install_checkpoint(
            model,
            tokenizer,
            source,
            lambda **feeds: reference(feeds),
            model.token_inputs,
            options,
            repository,
            prompt,
        )
    pairs = pair_tokenizer(tokenizer, model, prompt)
    scorer = relevance_scorer(network, true_id, false_id)
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "model.onnx"
        _export_checked(scorer, reference, pairs, model, options, graph)
        return install(model, tokenizer, graph, options, repository, prompt)


def _causal_options(name: str, config: dict[str, Any], options: BuildOptions) -> BuildOptions:
    """A causal LM's own precision default (bf16 under PyTorch on a GPU: its activations can
    overflow fp16), and the refusal of a head it cannot be served with."""
    on_gpu = options.device is Device.GPU and options.runtime is Runtime.TORCH
    if on_gpu and not options.precision_chosen:
        options = replace(options, precision=Precision.BF16)
    if config.get("final_logit_softcapping"):
        raise BuildError(
            f"{name} caps its logits (final_logit_softcapping): the difference of two "
            "capped logits is not a difference of rows of the head, so it cannot be served"
        )
    return options


def _print_relevance(hf_tokenizer: Any, model: ServedModel, templated: bool) -> None:
    true_id, false_id = model.relevance_tokens or (0, 0)
    print(
        f"  relevance tokens: {hf_tokenizer.convert_ids_to_tokens(true_id)!r} ({true_id}) less "
        f"{hf_tokenizer.convert_ids_to_tokens(false_id)!r} ({false_id}); "
        + (
            f"instruction slot: {'yes' if model.takes_instruction else 'no'}"
            if templated
            else "no chat template: the pair is tokenized as a text pair"
        ),
        file=sys.stderr,
    )


def _export_checked(
    scorer: Any,
    reference: Any,
    pairs: Any,
    model: ServedModel,
    options: BuildOptions,
    graph: Path,
) -> None:
    """Exports the relevance graph to ``graph`` and checks it against the checkpoint. The
    graph that takes the shared prefix apart serves fp32 on CPU; int8 and bf16 (their
    accuracy reports feed whole rows) and GPU engines serve whole rows."""
    import torch

    from reranker.builder.install import check_export
    from reranker.builder.onnx_export import export_module, max_export_error, sample_batch

    name = model.architecture
    if (
        options.tuning.shared_prefix
        and options.precision is Precision.FP32
        and (options.device is Device.CPU)
    ):
        batch = prefix_sample(pairs)
        with step(f"exporting {name} (last-token relevance, shared prefix) to ONNX"):
            export_after_prefix(scorer, batch, graph)
        check_export(max_after_prefix_error(graph, reference, batch, sample_batch(pairs)))
        return
    batch = sample_batch(pairs)
    feeds = {key: torch.from_numpy(batch[key]) for key in model.token_inputs}
    with step(f"exporting {name} (last-token relevance) to ONNX"):
        export_module(scorer, feeds, "relevance", graph)
    check_export(max_export_error(graph, reference, batch))


def prefix_sample(pairs: Any) -> dict[str, Any]:
    """Rows of two queries, the first with three documents of uneven lengths: the export's
    trace needs a group of several rows with a rest of several tokens."""
    queries = ["what is a reranker?"] * 3 + ["how long is the river nile in kilometres"]
    documents = [
        "A reranker orders candidate documents by their relevance to a query.",
        "Cross-encoders read the query and the document together.",
        "The Nile is about 6,650 km long. " * 3,
        "The Nile flows north through eleven countries.",
    ]
    return dict(pairs.pad(pairs.tokenize(queries, documents)))


def export_after_prefix(scorer: Any, batch: dict[str, Any], path: Path) -> None:
    """Exports the graph of :class:`AfterPrefix` (inputs ``prefix_ids``, ``input_ids``
    after it, ``attention_mask``), traced on the first query's rows behind the prefix they
    share, so the trace sees several rows with a rest of several tokens after one prefix."""
    import torch

    from reranker.backend.scorers import AfterPrefix
    from reranker.builder.onnx_export import export_module

    feeds = _first_query_behind_its_prefix(batch)
    inputs = {name: torch.from_numpy(values) for name, values in feeds.items()}
    axes = {
        PREFIX_IDS: {0: "prefix_rows", 1: "prefix"},
        "input_ids": {0: "batch", 1: "rest"},
        "attention_mask": {0: "batch", 1: "sequence"},
    }
    export_module(AfterPrefix(scorer).eval(), inputs, "relevance", path, axes)


def _first_query_behind_its_prefix(batch: dict[str, Any]) -> dict[str, Any]:
    """``prefix_sample``'s first three rows (one query) split after the tokens they share."""
    from reranker.backend.prefix import common_prefix, split_prefix

    rows = {name: values[:3] for name, values in batch.items()}
    width = int(rows["attention_mask"].sum(axis=1).min())
    return split_prefix(rows, min(common_prefix(rows["input_ids"][:, :width]), width - 1))


def max_after_prefix_error(
    path: Path, reference: Any, traced: dict[str, Any], other: dict[str, Any]
) -> float:
    """Largest difference between the checkpoint's whole-row scores and the graph's: on the
    rows and split it was traced with, and on ``traced`` and a batch of ``other`` shapes run
    as the encoder runs them (each prefix group apart) and with every row whole (each its
    own prefix): what the trace fixed shows there."""
    import torch

    from reranker.backend.prefix import SharedPrefixGraph, split_prefix
    from reranker.backend.runtimes import OnnxRuntimeRunner

    session = OnnxRuntimeRunner(path, 0)

    def expected(batch: dict[str, Any]) -> Any:
        feeds = {name: torch.from_numpy(batch[name]) for name in ("input_ids", "attention_mask")}
        return reference(feeds).numpy().reshape(-1)

    first = {name: values[:3] for name, values in traced.items()}
    errors = [np.abs(session.run(_first_query_behind_its_prefix(traced)) - expected(first))]
    for batch in (traced, other):
        tokens = {name: batch[name] for name in ("input_ids", "attention_mask")}
        whole = session.run(split_prefix(tokens, 0))
        scores = expected(batch)
        errors += [np.abs(SharedPrefixGraph(session).run(tokens) - scores), np.abs(whole - scores)]
    return float(max(e.max() for e in errors))
