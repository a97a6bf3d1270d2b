"""Model vocabulary: the tokens.txt table plus the SentencePiece BPE that produced it."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from kwsd.errors import ModelError


class Tokenizer:
    """Maps phrases to BPE pieces and pieces to the model's token ids."""

    def __init__(self, tokens_path: Path, bpe_path: Path) -> None:
        self.piece_to_id: dict[str, int] = {}
        try:
            for _line_no, line in enumerate(tokens_path.read_text("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                piece, _, ident = line.rpartition(" ")
                self.piece_to_id[piece] = int(ident)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot read {tokens_path} (line {locals().get('line_no', '?')}): {exc}; "
                "run `kwsd models verify` and re-pull the model if it is damaged"
            ) from exc
        self.id_to_piece = {i: p for p, i in self.piece_to_id.items()}
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(bpe_path))
        except (OSError, RuntimeError) as exc:
            raise ModelError(
                f"cannot load BPE model {bpe_path}: {exc}; run `kwsd models verify`"
            ) from exc
        self.alphabet = self._alphabet()

    def encode(self, text: str) -> list[str]:
        pieces: list[str] = self._sp.encode(text, out_type=str)
        return pieces

    def _alphabet(self) -> frozenset[str]:
        """Characters the vocabulary can spell; anything else would become <unk>."""
        chars: set[str] = set()
        for piece in self.piece_to_id:
            if piece.startswith("<"):
                continue
            chars.update(piece.replace("▁", ""))
        return frozenset(chars)
