"""Identities: every person's identifiers, and the guest cards and tablets several share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.synthetic.draws import hex_strings, mix64
from features.synthetic.vocabulary import GUEST, K_APP, KIND_TYPE, N_KINDS, NOKEY, NONE


class Identities:
    """A chunk's identifiers (methods of `world._Chunk`, which holds the state)."""

    def _family_tablets(self) -> None:
        """~family_tablet_share of persons use an app device owned by another person of the chunk."""
        rng, n = self.rng, self.n
        self.tablet_a = self.tablet_b = np.zeros(0, dtype=np.int64)
        owners = np.flatnonzero(self.app_user)
        pairs = min(rng.binomial(n, self.p.family_tablet_share / 2.0), len(owners), n // 2)
        if pairs == 0:
            return
        a = rng.choice(owners, pairs, replace=False)
        b = rng.choice(np.setdiff1d(np.arange(n), a), pairs, replace=False)
        install = np.maximum(self.install_t[a], self.signup_t[b]) + rng.exponential(10.0, pairs)
        ok = install < self.D
        a, b, install = a[ok], b[ok], install[ok]
        self.app_owner[b] = a
        self.app_user[b] = True
        self.install_t[b] = install
        self.login_t[b] = install
        self.tablet_a, self.tablet_b = a, b

    def _identifiers(self) -> None:
        """Keys of every (identifier kind, person); globally unique via a bijective hash."""
        spec = self.spec
        local = np.arange(self.n, dtype=np.uint64)
        seed_mix = mix64(np.uint64(spec.seed % 2**64))
        parts = []
        for kind, type_ in enumerate(KIND_TYPE):
            x = (
                (np.uint64(kind) << np.uint64(56))
                | (np.uint64(spec.chunk) << np.uint64(32))
                | local
            )
            parts.append(hex_strings(f"{type_}:", mix64(x ^ seed_mix)))
        guests = [f"loyalty:guest-store-{g + 1:02d}" for g in range(self.p.guest_cards)]
        self.key_dictionary = pa.concat_arrays([*parts, pa.array([*guests, "nokey"])])
        self.has_kind = np.stack(
            [
                np.ones(self.n, dtype=bool),
                self.has_email,
                self.has_phone,
                self.member,
                np.ones(self.n, dtype=bool),
                self.n_cookies >= 1,
                self.n_cookies >= 2,
                self.app_user & (self.app_owner == np.arange(self.n)),
            ]
        )

    def _key_strings(self, kind: np.ndarray, person: np.ndarray) -> pa.Array:
        """Key strings of (identifier kind, person) codes; kind -1 gives null."""
        n = self.n
        kind = kind.astype(np.int64)
        owner = np.where(kind == K_APP, self.app_owner[person], person)
        idx = kind * n + owner
        idx = np.where(kind >= GUEST, N_KINDS * n + kind - GUEST, idx)
        idx = np.where(kind == NOKEY, N_KINDS * n + self.p.guest_cards, idx)
        indices = pa.array(idx, mask=kind == NONE) if (kind == NONE).any() else pa.array(idx)
        return pc.take(self.key_dictionary, indices)
