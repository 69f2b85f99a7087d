"""Text conditioning: the template, the learned task token and exemplar token slots.

The token sequence the UNet attends to is::

    <bos> [<mm-task>] [exemplar slots ...] repetitive objects <eos> <pad> ...

The optional task token is a tokenizer placeholder whose input-embedding row is set
(as in textual inversion), so it goes through the CLIP text encoder. Exemplar
embeddings (from the projector) are written into the encoder's *output* sequence at
the slot(s) right after the task token; a batch of K exemplars takes K slots, so the
sequence grows to 77 + K (cross-attention takes any length) and every exemplar gets
its own cross-attention map in one UNet pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEMPLATE = "repetitive objects"
TASK_TOKEN = "<mm-task>"


@dataclass
class TextConditioning:
    """Encoded prompt and where its tokens sit."""

    hidden: torch.Tensor  #: (1, L, D) text-encoder output
    slot: int  #: index where exemplar embeddings are inserted
    template_columns: list[int]  #: positions of the template's word tokens
    prompt: str


def has_task_token(tokenizer) -> bool:
    return TASK_TOKEN in tokenizer.get_vocab()


def set_task_embedding(tokenizer, text_encoder, embedding: torch.Tensor | None) -> None:
    """Add (once) the placeholder task token and set its input-embedding row.

    ``embedding=None`` leaves the token out of the prompt again (the row stays).
    """
    if embedding is None:
        text_encoder._mm_task_on = False
        return
    if not has_task_token(tokenizer):
        tokenizer.add_tokens([TASK_TOKEN])
        text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings()
    row = tokenizer.convert_tokens_to_ids(TASK_TOKEN)
    vec = torch.as_tensor(embedding).reshape(-1)
    if vec.numel() != table.weight.shape[1]:
        raise ValueError(f"task embedding has {vec.numel()} values, the text encoder expects "
                         f"{table.weight.shape[1]}")
    with torch.no_grad():
        table.weight[row] = vec.to(table.weight)
    text_encoder._mm_task_on = True


def task_token_on(text_encoder) -> bool:
    return bool(getattr(text_encoder, "_mm_task_on", False))


@torch.no_grad()
def encode_text(tokenizer, text_encoder, template: str = TEMPLATE) -> TextConditioning:
    """Run the prompt (with the task token when one is set) through the text encoder."""
    use_task = task_token_on(text_encoder)
    prompt = f"{TASK_TOKEN} {template}" if use_task else template
    length = int(text_encoder.config.max_position_embeddings)
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(device))[0]
    eos_id = tokenizer.eos_token_id
    row = ids[0].tolist()
    end = row.index(eos_id, 1) if eos_id in row[1:] else len(row)
    first = 2 if use_task else 1
    return TextConditioning(hidden=hidden, slot=first, template_columns=list(range(first, end)),
                            prompt=prompt)


def insert_slots(hidden: torch.Tensor, slot: int, embeddings: torch.Tensor) -> torch.Tensor:
    """Write ``embeddings`` ``(B, K, D)`` (or ``(K, D)``) into ``hidden`` ``(B, L, D)`` at ``slot``.

    Returns ``(B, L + K, D)``; the text tokens after ``slot`` move K places right.
    """
    if embeddings.ndim == 2:
        embeddings = embeddings[None]
    b = max(hidden.shape[0], embeddings.shape[0])
    hidden = hidden.expand(b, -1, -1)
    embeddings = embeddings.to(hidden).expand(b, -1, -1)
    return torch.cat([hidden[:, :slot], embeddings, hidden[:, slot:]], dim=1)


def describe(kind: str, n_boxes: int, per_object: bool, template: str = TEMPLATE, task_token: bool = False,
             sharpen: bool = True) -> str:
    """Words for ``MatchMaps.conditioning``: what the maps were conditioned on."""
    text = f'text template "{template}"' + (" after the learned task token" if task_token else "")
    if kind == "text":
        return text
    if kind == "projector":
        return (f"exemplar embedding of {n_boxes} box(es) from the trained projector"
                + ("" if per_object else " (averaged)") + f" in the {text}")
    return (f"exemplar from the self-attention of {n_boxes} box(es)"
            + (" sharpened by UNet-feature similarity" if sharpen else "")
            + f" (projector not trained); UNet conditioned on the {text}")
