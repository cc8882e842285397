"""Encode and decode with a Hugging Face `tokenizer.json` BPE tokenizer, using only the standard library.

`Tokenizer.from_file("tokenizer.json")` reads the BPE tokenizers of LLaMA-family models (GPT-2, SmolLM2,
Llama-2/3, TinyLlama, Qwen2) and runs the same pipeline as the Rust `tokenizers` library:

    encode: added tokens -> normalizer -> pre-tokenizer -> BPE       == tok.encode(text, add_special_tokens=False).ids
    decode: ids -> token strings -> decoder                          == tok.decode(ids, skip_special_tokens=False)

The file goes bottom-up, each part naming the HF component it mirrors: regexes, splitting text at matches,
the normalizers, pre-tokenizers and decoders built from the JSON, then `BPE` (the model: one word -> ids),
`AddedVocabulary` (tokens such as <|im_start|>, cut out first) and `Tokenizer`, which runs them in that
order. HF matches its regexes with Oniguruma; Python's `re` lacks `\\p{L}` and reads `\\s` differently, so
`translate_regex` rewrites them into explicit code-point classes.
Anything the file asks for that is not implemented here is a ValueError naming the file and the field.
"""
import functools
import heapq
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

SPIECE = "\u2581"  # "▁", SentencePiece's visible space
# The White_Space property: what Oniguruma's \s, Rust's char::is_whitespace and Rust regex's \s all mean.
# (Python's \s and str.isspace also accept \x1c-\x1f, so they are never used on text.)
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
               + "\u2028\u2029\u202f\u205f\u3000")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<|im_start|>", "<|endoftext|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")
PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")
CACHE_SIZE, CACHE_WORD_LEN = 100_000, 256


# ----------------------------------------------------------------------------------------------------------
# Oniguruma regex -> Python re


@functools.cache
def _category_runs() -> dict[str, list[tuple[int, int]]]:
    """Maximal code-point runs of each Unicode general category ("Lu", "Nd", ...), read from `unicodedata`."""
    runs, start, current = {}, 0, unicodedata.category("\0")
    for cp in range(1, 0x110000):
        category = unicodedata.category(chr(cp))
        if category != current:
            runs.setdefault(current, []).append((start, cp - 1))
            start, current = cp, category
    runs.setdefault(current, []).append((start, 0x10FFFF))
    return runs


def _union(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges):
    out, next_cp = [], 0
    for lo, hi in ranges:
        if lo > next_cp:
            out.append((next_cp, lo - 1))
        next_cp = hi + 1
    return out + [(next_cp, 0x10FFFF)] if next_cp <= 0x10FFFF else out


@functools.cache
def _class_ranges(name: str) -> list[tuple[int, int]]:
    """Code points of `\\p{name}` (a general category: L, Lu, N, Nd, P, ...) or of Oniguruma's Unicode \\s \\d \\w."""
    runs = _category_runs()
    if name == "s":
        return _union((ord(c), ord(c)) for c in WHITE_SPACE)
    categories = {"d": ["Nd"], "w": [c for c in runs if c[0] in "LM" or c in ("Nd", "Pc")]}.get(name)
    if categories is None:
        categories = [c for c in runs if c == name or (len(name) == 1 and c[0] == name)]
    if not categories:
        raise ValueError(f"unknown Unicode property \\p{{{name}}}")
    return _union(r for c in categories for r in runs[c])


def _class_body(ranges) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


_ONIG_ESCAPE = re.compile(r"\\(?:([pP])(?:\{(\^?)(\w+)\}|([A-Za-z]))|([sSdDwW])|x\{([0-9a-fA-F]+)\})")


def translate_regex(pattern: str) -> str:
    """Rewrite an Oniguruma pattern for Python `re` so that both find the same matches.

    `\\p{..}`, `\\P{..}`, `\\p{^..}` and `\\s \\S \\d \\D \\w \\W` become explicit code-point classes (inside a
    character class, their ranges or the complement of them), and `\\x{HHHH}` becomes `\\UHHHHHHHH`. The rest
    of the syntax HF tokenizers use (`(?i:..)`, lookahead, `{1,3}`) already means the same in both engines.
    """
    out, i, class_start = [], 0, None  # class_start: where the open [...] body begins (a "]" there is literal)
    while i < len(pattern):
        m = _ONIG_ESCAPE.match(pattern, i)
        if m:
            prop, caret, braced, single, letter, hex_code = m.groups()
            if hex_code:
                out.append(f"\\U{int(hex_code, 16):08x}")
            else:
                ranges = _class_ranges(braced or single) if prop else _class_ranges(letter.lower())
                negate = (prop == "P") != bool(caret) if prop else letter.isupper()
                if class_start is not None:
                    out.append(_class_body(_complement(ranges) if negate else ranges))
                else:
                    out.append(("[^" if negate else "[") + _class_body(ranges) + "]")
            i = m.end()
            continue
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[":
            if class_start is not None:
                raise ValueError("nested character classes are not supported")
            class_start = i + 1 + (pattern[i + 1:i + 2] == "^")
        elif ch == "]" and class_start is not None and i != class_start:
            class_start = None
        out.append(ch)
        i += 1
    return "".join(out)


@functools.cache
def compile_regex(pattern: str) -> re.Pattern:
    """Compile an Oniguruma pattern; MULTILINE because Oniguruma's ^ and $ match at every line."""
    try:
        return re.compile(translate_regex(pattern), re.MULTILINE)
    except (re.error, ValueError) as e:
        raise ValueError(f"regex {pattern!r} is not supported ({e})") from None


# ----------------------------------------------------------------------------------------------------------
# Splitting text at matches (HF `Pattern::find_matches` and `NormalizedString::split`)


def _spans(text: str, regex: re.Pattern) -> list[tuple[int, int, bool]]:
    """(start, end, is_match) runs that cover `text`, one per match and one per gap between matches.

    Matches are found as Oniguruma's iterator finds them: an empty match right where the previous match ended
    is skipped, and after an empty match the search resumes one char later (Python's finditer would retry
    there for a longer match, so `x?|\\d*` would find "2024" where Oniguruma finds four empty matches).
    """
    spans, pos, prev, last_end = [], 0, 0, -1
    while pos <= len(text) and (m := regex.search(text, pos)):
        start, end = m.span()
        if start == end == last_end:
            pos += 1
            continue
        if prev < start:
            spans.append((prev, start, False))
        spans.append((start, end, True))
        pos = prev = last_end = end
    if prev < len(text):
        spans.append((prev, len(text), False))
    return spans


def split(text: str, regex: re.Pattern, behavior: str, invert: bool = False) -> list[str]:
    """Cut `text` at the matches of `regex` (at the non-matches if `invert`), keeping them as HF's behaviours do.

    Isolated: each match is its own piece. Removed: matches are dropped. MergedWithPrevious/Next: a match is
    glued to the piece before/after it. Contiguous: adjacent matches form one piece. Empty pieces are dropped.
    """
    spans = [(s, e, is_match != invert) for s, e, is_match in _spans(text, regex)]
    if behavior == "Removed":
        kept = [(s, e) for s, e, is_match in spans if not is_match]
    elif behavior == "Isolated":
        kept = [(s, e) for s, e, _ in spans]
    else:
        backwards = behavior == "MergedWithNext"
        kept, prev_match = [], False
        for s, e, is_match in reversed(spans) if backwards else spans:
            glue = is_match == prev_match if behavior == "Contiguous" else is_match and not prev_match
            if glue and kept:
                kept[-1] = (min(kept[-1][0], s), max(kept[-1][1], e))
            else:
                kept.append((s, e))
            prev_match = is_match
        kept = kept[::-1] if backwards else kept
    return [text[s:e] for s, e in kept if e > s]


def _replace(text: str, regex: re.Pattern, content: str) -> str:
    return "".join(content if is_match else text[s:e] for s, e, is_match in _spans(text, regex))


# ----------------------------------------------------------------------------------------------------------
# Building the pipeline from the JSON (HF `NormalizerWrapper`, `PreTokenizerWrapper`, `DecoderWrapper`)


def _field(spec, key, where, kind=object):
    """spec[key], or a ValueError naming the field (`where.key`) when it is missing or not of type `kind`."""
    name = f"{where}.{key}" if where else key
    if not isinstance(spec, dict) or key not in spec:
        raise ValueError(f"{name} is missing")
    if not isinstance(spec[key], kind):
        raise ValueError(f"{name} is not a JSON {'object' if kind is dict else 'array'}")
    return spec[key]


def _pattern(spec, where) -> re.Pattern:
    """A {"String": s} or {"Regex": r} pattern; HF compiles both with Oniguruma (the string escaped)."""
    pattern = _field(spec, "pattern", where)
    if isinstance(pattern, dict) and "String" in pattern:
        return re.compile(re.escape(pattern["String"]))
    if isinstance(pattern, dict) and "Regex" in pattern:
        try:
            return compile_regex(pattern["Regex"])
        except ValueError as e:
            raise ValueError(f"{where}.pattern: {e}") from None
    raise ValueError(f"{where}.pattern must be {{'String': ...}} or {{'Regex': ...}}")


def _lowercase(text: str) -> str:
    """Rust lowercases char by char; Python's str.lower differs only by its final-sigma rule for 'Σ'."""
    return "".join(c.lower() for c in text) if "\u03a3" in text else text.lower()


def _chain(steps):
    """One function that applies `steps` in order (a Sequence normalizer or decoder)."""
    def apply(value):
        for step in steps:
            value = step(value)
        return value
    return apply


def build_normalizer(spec, where="normalizer"):
    """A str -> str function for a normalizer spec."""
    kind = _field(spec, "type", where)
    if kind == "Sequence":
        specs = _field(spec, "normalizers", where, list)
        return _chain([build_normalizer(s, f"{where}.normalizers[{i}]") for i, s in enumerate(specs)])
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda text: unicodedata.normalize(kind, text)
    if kind == "Lowercase":
        return _lowercase
    if kind == "Prepend":  # only a non-empty string gets the prefix
        prefix = _field(spec, "prepend", where)
        return lambda text: prefix + text if text else text
    if kind == "Replace":
        regex, content = _pattern(spec, where), _field(spec, "content", where)
        return lambda text: _replace(text, regex, content)
    if kind == "Strip":
        left, right = spec.get("strip_left", True), spec.get("strip_right", True)

        def strip(text):
            text = text.lstrip(WHITE_SPACE) if left else text
            return text.rstrip(WHITE_SPACE) if right else text
        return strip
    raise ValueError(f"{where} type {kind!r} is not supported")


def _byte_table():
    """GPT-2's byte -> printable char map (HF `bytes_char`): visible Latin-1 bytes stand for themselves, the
    other 68 bytes take U+0100, U+0101, ... in byte order, so every byte string becomes a visible string."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        table[b] = chr(b) if b in visible else chr(256 + n)
        n += b not in visible
    return table


BYTE_TO_CHAR = _byte_table()  # also how gguf.py spells a byte-level GGUF vocabulary
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_LATIN1_TO_BYTE_CHARS = str.maketrans({chr(b): c for b, c in BYTE_TO_CHAR.items()})


def _byte_chars(text: str) -> str:
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


def build_pre_tokenizer(spec, where="pre_tokenizer"):
    """A (text, first) -> list-of-words function; `first` says the text starts the input (Metaspace "first")."""
    kind = _field(spec, "type", where)
    if kind == "Sequence":
        specs = _field(spec, "pretokenizers", where, list)
        steps = [build_pre_tokenizer(s, f"{where}.pretokenizers[{i}]") for i, s in enumerate(specs)]

        def sequence(text, first):
            pieces = [text]
            for step in steps:
                pieces = [word for i, piece in enumerate(pieces) for word in step(piece, first and i == 0)]
            return pieces
        return sequence
    if kind == "Split":
        regex, behavior, invert = _pattern(spec, where), _field(spec, "behavior", where), spec.get("invert", False)
        if behavior not in BEHAVIORS:
            raise ValueError(f"{where}.behavior {behavior!r} is not one of {BEHAVIORS}")
        return lambda text, first: split(text, regex, behavior, invert)
    if kind == "Digits":  # every numeric char (Rust char::is_numeric = \p{N}) alone, or runs of them
        regex, behavior = compile_regex(r"\p{N}"), "Isolated" if spec.get("individual_digits", False) else "Contiguous"
        return lambda text, first: split(text, regex, behavior)
    if kind == "ByteLevel":  # optional leading space, the GPT-2 regex, then bytes as visible chars
        prefix, use_regex = spec.get("add_prefix_space", True), spec.get("use_regex", True)

        def byte_level(text, first):
            text = " " + text if prefix and not text.startswith(" ") else text
            pieces = split(text, compile_regex(GPT2_PATTERN), "Isolated") if use_regex else [text]
            return [_byte_chars(piece) for piece in pieces]
        return byte_level
    if kind == "Metaspace":  # spaces become "▁", a "▁" is prepended, words start at each "▁"
        rep, scheme, cut = _field(spec, "replacement", where), _metaspace_scheme(spec, where), spec.get("split", True)
        rep_regex = re.compile(re.escape(rep))

        def metaspace(text, first):
            text = text.replace(" ", rep)
            if not text.startswith(rep) and (scheme == "always" or (scheme == "first" and first)):
                text = rep + text
            return split(text, rep_regex, "MergedWithNext") if cut else [text]
        return metaspace
    raise ValueError(f"{where} type {kind!r} is not supported")


def _metaspace_scheme(spec, where) -> str:
    scheme = spec.get("prepend_scheme", "always" if spec.get("add_prefix_space", True) else "never")
    if scheme not in ("always", "first", "never"):
        raise ValueError(f"{where}.prepend_scheme {scheme!r} is not one of always/first/never")
    return scheme


def _byte_level_decode(tokens):
    """HF ByteLevel decoder: visible chars back to bytes (a token with other chars, e.g. an added token, is
    taken as UTF-8), then one lossy UTF-8 decode of the whole byte string."""
    data = bytearray()
    for token in tokens:
        try:
            data += bytes(CHAR_TO_BYTE[c] for c in token)
        except KeyError:
            data += token.encode("utf-8")
    return [data.decode("utf-8", errors="replace")]


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_fallback_decode(tokens):
    """HF ByteFallback decoder: runs of <0xNN> tokens become their UTF-8 text, or one U+FFFD per byte if invalid."""
    out, pending = [], bytearray()
    for token in [*tokens, None]:
        m = _BYTE_TOKEN.fullmatch(token) if token is not None else None
        if m:
            pending.append(int(m.group(1), 16))
            continue
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending = bytearray()
        if token is not None:
            out.append(token)
    return out


def build_decoder(spec, where="decoder"):
    """A list-of-token-strings -> list-of-strings function (HF `decode_chain`); decode joins the result."""
    kind = _field(spec, "type", where)
    if kind == "Sequence":
        specs = _field(spec, "decoders", where, list)
        return _chain([build_decoder(s, f"{where}.decoders[{i}]") for i, s in enumerate(specs)])
    if kind == "ByteLevel":
        return _byte_level_decode
    if kind == "ByteFallback":
        return _byte_fallback_decode
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "Replace":
        regex, content = _pattern(spec, where), _field(spec, "content", where)
        return lambda tokens: [_replace(t, regex, content) for t in tokens]
    if kind == "Strip":  # drop up to `start` leading and `stop` trailing `content` chars of each token
        content, start, stop = _field(spec, "content", where), spec.get("start", 0), spec.get("stop", 0)

        def strip(token):
            a, b = 0, len(token)
            while a < min(start, b) and token[a] == content:
                a += 1
            while len(token) - b < stop and b > a and token[b - 1] == content:
                b -= 1
            return token[a:b]
        return lambda tokens: [strip(t) for t in tokens]
    if kind == "Metaspace":  # "▁" -> " ", except that the first token loses its "▁"s (the prepended space)
        rep, scheme = _field(spec, "replacement", where), _metaspace_scheme(spec, where)
        first_space = "" if scheme != "never" else " "
        return lambda tokens: [t.replace(rep, first_space if i == 0 else " ") for i, t in enumerate(tokens)]
    raise ValueError(f"{where} type {kind!r} is not supported")


# ----------------------------------------------------------------------------------------------------------
# The model: BPE on one pre-tokenized word (HF `models::bpe::BPE`)


class BPE:
    """tokenizer.json's "model": a word starts as its chars' ids, then the adjacent pair of lowest merge rank
    is merged until no pair of the merge table is left."""

    def __init__(self, model: dict):
        if model.get("type", "BPE") != "BPE":
            raise ValueError(f"model type {model.get('type')!r} is not supported (only BPE)")
        if model.get("dropout") not in (None, 0, 0.0):
            raise ValueError("model.dropout is not supported (BPE dropout is random)")
        self.vocab: dict[str, int] = _field(model, "vocab", "model", dict)
        self.prefix = model.get("continuing_subword_prefix") or ""
        self.suffix = model.get("end_of_word_suffix") or ""
        self.unk_token = model.get("unk_token")
        if self.unk_token is not None and self.unk_token not in self.vocab:
            raise ValueError(f"model.unk_token {self.unk_token!r} is not in the vocab")
        self.byte_fallback = model.get("byte_fallback", False)
        self.fuse_unk = model.get("fuse_unk", False)
        self.ignore_merges = model.get("ignore_merges", False)
        self.merges = self._merge_table(_field(model, "merges", "model", list))
        self._chunker = self._sentencepiece_chunker()
        self._cache: dict[str, list[int]] = {}

    def _merge_table(self, merges) -> dict[tuple[int, int], tuple[int, int]]:
        """(left id, right id) -> (rank, merged id), as HF's MergeMap; merges are "a b" strings or [a, b] pairs."""
        table = {}
        for rank, merge in enumerate(merges):
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if len(pair) != 2:
                raise ValueError(f"model.merges[{rank}] {merge!r} is not a pair")
            a, b = pair
            merged = a + b[len(self.prefix):]
            for token in (a, b, merged):
                if token not in self.vocab:
                    raise ValueError(f"model.merges[{rank}] {merge!r}: {token!r} is not in the vocab")
            table[self.vocab[a], self.vocab[b]] = (rank, self.vocab[merged])
        return table

    def _sentencepiece_chunker(self):
        """A regex that cuts a word before each "▁" that follows another char, if that cannot change the result.

        SentencePiece-style tokenizers have no pre-tokenizer: the whole text is one BPE word. When no merge builds
        a token with a non-"▁" char followed by "▁", no token can span such a cut, so merging each chunk alone is
        exactly equivalent (the merge order inside each chunk is unchanged), and the chunks can be cached.
        """
        token_of = {i: t for t, i in self.vocab.items()}
        safe = (SPIECE in self.vocab and not self.prefix and not self.suffix and not self.ignore_merges
                and not any(re.search(f"[^{SPIECE}]{SPIECE}", token_of[m]) for _, m in self.merges.values()))
        return re.compile(f"(?<=[^{SPIECE}])(?={SPIECE})") if safe else None

    def tokenize(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word, cached. With `ignore_merges` (Llama-3) a word in the vocab is one token."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        chunks = self._chunker.split(word) if self._chunker else [word]  # (never with ignore_merges)
        if self.ignore_merges and word in self.vocab:
            ids = [self.vocab[word]]
        elif len(chunks) > 1:
            ids = [i for chunk in chunks for i in self.tokenize(chunk)]
        else:
            ids = self._merge(self._char_ids(word))
        if len(word) <= CACHE_WORD_LEN:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _char_ids(self, word: str) -> list[int]:
        """HF `merge_word`'s starting symbols: each char (with the subword prefix/suffix), else its <0xNN> byte
        tokens, else unk. An unknown char is held back until the next known char; with fuse_unk a run is one unk."""
        ids, pending_unk = [], False
        for i, ch in enumerate(word):
            s = (self.prefix if i > 0 else "") + ch + (self.suffix if i == len(word) - 1 else "")
            if s in self.vocab:
                ids += [self.vocab[self.unk_token], self.vocab[s]] if pending_unk else [self.vocab[s]]
                pending_unk = False
            elif self.byte_fallback and all(f"<0x{b:02X}>" in self.vocab for b in s.encode()):
                ids += [self.vocab[f"<0x{b:02X}>"] for b in s.encode()]
            elif self.unk_token is not None:  # (without an unk token, HF drops the char)
                if pending_unk and not self.fuse_unk:
                    ids.append(self.vocab[self.unk_token])
                pending_unk = True
        return ids + [self.vocab[self.unk_token]] if pending_unk else ids

    def _merge(self, ids: list[int]) -> list[int]:
        """HF `Word::merge_all`: repeatedly merge the adjacent pair of lowest rank (leftmost on ties).

        A heap of candidate pairs over a linked list of symbols, O(n log n). A popped pair is stale when its left
        symbol was merged away or the pair there now merges into a different token; then it is skipped.
        """
        n = len(ids)
        nxt, prev, alive = [*range(1, n), -1], list(range(-1, n - 1)), [True] * n
        candidates = ((i, self.merges.get((ids[i], ids[i + 1]))) for i in range(n - 1))
        heap = [(m[0], i, m[1]) for i, m in candidates if m]  # (rank, left position, merged id): low rank, leftmost
        heapq.heapify(heap)
        while heap:
            _, i, merged = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j == -1 or self.merges.get((ids[i], ids[j]), (0, None))[1] != merged:
                continue
            ids[i], alive[j] = merged, False
            nxt[i] = k = nxt[j]
            if k != -1:
                prev[k] = i
            for left, right in ((prev[i], i), (i, k)):
                if left != -1 and right != -1 and (ids[left], ids[right]) in self.merges:
                    rank, new = self.merges[ids[left], ids[right]]
                    heapq.heappush(heap, (rank, left, new))
        return [ids[i] for i in range(n) if alive[i]]


# ----------------------------------------------------------------------------------------------------------
# Added tokens: cut out of the text before the model sees it (HF `AddedVocabulary`)


@dataclass(frozen=True)
class AddedToken:
    """An entry of `added_tokens`; `pattern` is what is searched for (the content, normalized if `normalized`)."""
    id: int
    content: str
    pattern: str
    single_word: bool
    lstrip: bool
    rstrip: bool
    normalized: bool


def _is_word_char(c: str) -> bool:
    """Rust regex's \\w, which HF uses for `single_word` (letters, marks, Nd/Nl digits, connectors, ZWJ/ZWNJ)."""
    return unicodedata.category(c)[0] in "LM" or unicodedata.category(c) in ("Nd", "Nl", "Pc") or c in "\u200c\u200d"


class AddedVocabulary:
    """tokenizer.json's "added_tokens" (<|im_start|>, <s>, ...): found in the text by string match, never by BPE."""

    def __init__(self, entries, vocab: dict[str, int], normalize):
        self.tokens = self._added_tokens(entries, vocab, normalize)
        self.ids = {t.content: t.id for t in self.tokens}
        self._raw_matcher = self._matcher([t for t in self.tokens if not t.normalized])
        self._normalized_matcher = self._matcher([t for t in self.tokens if t.normalized])

    @staticmethod
    def _added_tokens(entries, vocab, normalize) -> list[AddedToken]:
        """HF keeps a token's vocab id when the model has it; a normalized token is matched in normalized form."""
        added = []
        for i, entry in enumerate(entries):
            content, normalized = _field(entry, "content", f"added_tokens[{i}]"), entry.get("normalized", True)
            pattern = normalize(content) if normalized and normalize else content
            token_id = vocab.get(content, _field(entry, "id", f"added_tokens[{i}]"))
            added.append(AddedToken(token_id, content, pattern, entry.get("single_word", False),
                                    entry.get("lstrip", False), entry.get("rstrip", False), normalized))
        return added

    @staticmethod
    def _matcher(tokens):
        """One regex of all patterns, longest first: leftmost-longest like HF's Aho-Corasick automaton."""
        tokens = [t for t in tokens if t.pattern]
        if not tokens:
            return None
        by_pattern = {t.pattern: t for t in tokens}
        return re.compile("|".join(map(re.escape, sorted(by_pattern, key=len, reverse=True)))), by_pattern

    def split(self, text: str, normalize) -> list[tuple[str, int | None]]:
        """HF `extract_and_normalize`: cut out non-normalized added tokens from the raw text, normalize each
        remaining piece on its own, then cut out normalized added tokens. Empty pieces are dropped."""
        pieces = []
        for piece, token_id in self._find(text, self._raw_matcher):
            if token_id is not None:
                pieces.append((piece, token_id))
            else:
                normalized = normalize(piece) if normalize else piece
                pieces += self._find(normalized, self._normalized_matcher)
        return [(piece, token_id) for piece, token_id in pieces if piece]

    @staticmethod
    def _find(text, matcher) -> list[tuple[str, int | None]]:
        """HF `AddedVocabulary::find_matches`: single_word tokens need non-word chars around them; lstrip/rstrip
        tokens swallow the white space before/after them (but not text already taken by the previous token)."""
        if matcher is None or not text:
            return [(text, None)]
        regex, by_pattern = matcher
        out, start = [], 0
        for m in regex.finditer(text):
            token, (a, b) = by_pattern[m.group()], m.span()
            word_before, word_after = a > 0 and _is_word_char(text[a - 1]), b < len(text) and _is_word_char(text[b])
            if token.single_word and (word_before or word_after):
                continue
            while token.lstrip and a > start and text[a - 1] in WHITE_SPACE:
                a -= 1
            while token.rstrip and b < len(text) and text[b] in WHITE_SPACE:
                b += 1
            if start < a:
                out.append((text[start:a], None))
            out.append((text[a:b], token.id))
            start = b
        return out + [(text[start:], None)] if start < len(text) else out


# ----------------------------------------------------------------------------------------------------------
# The tokenizer: the parts above in HF's order, and the special tokens


def _token_name(value):
    """A tokenizer_config.json token entry: a string, null, or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


def _template_starts_with_bos(post_processor, tokenizer) -> bool:
    """True when a TemplateProcessing (alone or in a Sequence) puts the bos token before a single sequence."""
    if not post_processor:
        return False
    if post_processor.get("type") == "Sequence":
        return any(_template_starts_with_bos(p, tokenizer) for p in post_processor.get("processors", []))
    if post_processor.get("type") != "TemplateProcessing" or not post_processor.get("single"):
        return False
    first = post_processor["single"][0].get("SpecialToken", {}).get("id")
    return first is not None and tokenizer.bos_id is not None and tokenizer.token_to_id(first) == tokenizer.bos_id


class Tokenizer:
    """A BPE tokenizer read from a Hugging Face tokenizer.json; `encode`/`decode` equal HF's (see module doc)."""

    def __init__(self, spec: dict, config: dict | None = None, bos: str | None = None, eos: str | None = None):
        self.model = BPE(_field(spec, "model", "", dict))
        self._normalize = build_normalizer(spec["normalizer"]) if spec.get("normalizer") else None
        self._pre_tokenize = build_pre_tokenizer(spec["pre_tokenizer"]) if spec.get("pre_tokenizer") else None
        self._decode = build_decoder(spec["decoder"]) if spec.get("decoder") else None
        self.added = AddedVocabulary(spec.get("added_tokens") or [], self.model.vocab, self._normalize)
        self.id_to_str = {i: t for t, i in self.model.vocab.items()} | {t.id: t.pattern for t in self.added.tokens}
        self.vocab_size = max(self.id_to_str) + 1 if self.id_to_str else 0

        config = config or {}
        self.bos_id = self._special_id(bos, config, "bos_token", BOS_NAMES)
        self.eos_id = self._special_id(eos, config, "eos_token", EOS_NAMES)
        padding = spec.get("padding") or {}
        self.pad_id = self._special_id(None, config, "pad_token", (padding.get("pad_token"), *PAD_NAMES))
        # Whether the model was trained with a BOS token first: what HF's encode with add_special_tokens does
        # (tokenizer_config's add_bos_token, else the post_processor's template). encode() adds it when asked.
        self.add_bos = bool(config.get("add_bos_token", _template_starts_with_bos(spec.get("post_processor"), self)))

    @classmethod
    def from_file(cls, path, bos: str | None = None, eos: str | None = None) -> "Tokenizer":
        """Load a tokenizer.json; a tokenizer_config.json beside it sets bos/eos/pad, explicit `bos`/`eos` win."""
        path = Path(path)
        spec = _read_json(path)
        config_path = path.with_name("tokenizer_config.json")
        config = _read_json(config_path) if config_path.exists() else {}
        if not isinstance(config, dict) or not isinstance(config.get("add_bos_token", False), bool):
            raise ValueError(f"{config_path}: expected a JSON object whose add_bos_token, if given, is true or false")
        try:
            if not isinstance(spec, dict):
                raise ValueError("top level is not a JSON object")
            tokenizer = cls(spec, config, bos, eos)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: malformed tokenizer ({type(e).__name__}: {e})") from None
        if tokenizer.add_bos and tokenizer.bos_id is None:  # encode(bos=True) would fail on every text
            raise ValueError(f"{config_path}: add_bos_token is true, but there is no bos_token (null)")
        return tokenizer

    def _special_id(self, explicit, config, key, names):
        """Explicit name, else tokenizer_config.json's entry (null means none), else the first conventional name."""
        if explicit is not None:
            name = explicit
        elif key in config:
            name = _token_name(config[key])
        else:
            name = next((n for n in names if self.token_to_id(n) is not None), None)
        if name is not None and self.token_to_id(name) is None:
            raise ValueError(f"{key} {name!r} is not a token of this tokenizer")
        return None if name is None else self.token_to_id(name)

    def token_to_id(self, token: str) -> int | None:
        return self.added.ids.get(token, self.model.vocab.get(token))

    def id_to_token(self, id: int) -> str | None:
        """The token string; like HF, a `normalized` added token comes back in normalized form (Llama-2: "▁<s>")."""
        return self.id_to_str.get(id)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`: added tokens cut out, each other piece normalized, pre-tokenized into words, each
        word BPE-merged; `bos`/`eos` add those ids (HF's post-processor is not run)."""
        for wanted, special_id, name in ((bos, self.bos_id, "bos"), (eos, self.eos_id, "eos")):
            if wanted and special_id is None:
                raise ValueError(f"this tokenizer has no {name} token; pass {name}=... to Tokenizer.from_file")
        ids = []
        for i, (piece, token_id) in enumerate(self.added.split(text, self._normalize)):
            if token_id is not None:
                ids.append(token_id)
                continue
            for word in self._pre_tokenize(piece, i == 0) if self._pre_tokenize else [piece]:
                ids.extend(self.model.tokenize(word))
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        """HF `decode(ids, skip_special_tokens=False)`: special tokens stay as text, unknown ids are skipped."""
        tokens = [self.id_to_str[i] for i in ids if i in self.id_to_str]
        return "".join(self._decode(tokens)) if self._decode else " ".join(tokens)


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:  # a missing file raises FileNotFoundError naming it
        try:
            return json.load(f)
        except UnicodeDecodeError as e:  # a binary file, or another encoding
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
