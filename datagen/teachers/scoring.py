"""Scoring given text with an in-process model (GenRequest.continuation): its tokens, and each token's string so
that the strings spell the text back exactly.

The text is tokenized on its own (no special tokens) and put after the chat template's rendering of the messages
with the generation prompt, exactly where a reply the model wrote would be; the model's log-probabilities at those
positions are the soft labels (datagen/strategies/score.py).
"""

from __future__ import annotations

from datagen.teachers.base import TokenLogprobs


def continuation_ids(tok, text: str) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def token_strings(tok, ids: list[int], text: str) -> list[str]:
    """Each token's piece of `text`, so that they join back into it (see `spell`)."""
    def decode(part):
        return tok.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out = spell([decode([i]) for i in ids], text)
    if out is not None:
        return out
    # a tokenizer whose pieces do not add up (cleanup, normalisation): each token's share of the growing decode
    out, done = [], ""
    for n in range(1, len(ids) + 1):
        now = decode(ids[:n])
        out.append(now[len(done):] if now.startswith(done) else "")
        done = now if now.startswith(done) else done
    return out


def spell(pieces: list[str], text: str) -> list[str] | None:
    """Token pieces (each token decoded alone) made to join back into `text`: byte-level vocabularies split
    multi-byte characters, so a lone token can decode to U+FFFD; a run of such tokens gets "" and its last token the
    characters they make together. None when the pieces do not fit the text otherwise."""
    if "".join(pieces) == text:
        return list(pieces)
    out: list[str] = []
    at, i = 0, 0
    while i < len(pieces):
        if "\ufffd" not in pieces[i]:
            if not text.startswith(pieces[i], at):
                return None
            out.append(pieces[i])
            at += len(pieces[i])
            i += 1
            continue
        j = i
        while j < len(pieces) and "\ufffd" in pieces[j]:
            j += 1
        end = len(text) if j == len(pieces) else text.find(pieces[j], at + 1)
        if end < 0:
            return None
        out += [""] * (j - i - 1) + [text[at:end]]
        at, i = end, j
    return out if "".join(out) == text else None


def scored_positions(ids: list[int], strings: list[str], positions: list, k: int) -> list[TokenLogprobs]:
    """Each scored token with the top k of the distribution it was read from. `positions` are {token_id: (logprob,
    rank)} per token, holding at least the top k and the token itself."""
    out = []
    for tid, s, pos in zip(ids, strings, positions):
        best = sorted(pos.items(), key=lambda item: item[1][1])[:k]
        out.append(TokenLogprobs(token=s, token_id=tid, logprob=pos[tid][0], top_tokens=["" for _ in best],
                                 top_ids=[t for t, _ in best], top_logprobs=[lp for _, (lp, _) in best]))
    return out
