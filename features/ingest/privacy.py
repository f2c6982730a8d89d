"""Personal identifiers hashed at ingestion: what counts as clear, its normal form, the hash.

An identifier `email:Ann@Example.com` or `phone:+44 20 7946 0958` is personal data in clear; the
stores keep only `email:<64 hex>`, HMAC-SHA256 of the normalised value (e-mail trimmed and lower
case, phone as digits after a '+') under a secret from the environment (NBA_PII_SECRET, never a
default). A value that is not clear (already hashed, or a pseudonymous id such as the synthetic
world's 16 hex digits) passes unchanged, so hashing is idempotent and byte-identical on data
that holds no clear identifier. Batch data is hashed in DuckDB SQL (`key_sql`), single events in
Python (`hash_key`); both give the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from features.errors import UserError
from features.ingest.contract import KEY_SEPARATOR

SECRET_VARIABLE = "NBA_PII_SECRET"
MIN_SECRET_LENGTH = 16
EMAIL = "email"
PHONE = "phone"
# the types whose clear values are recognised (and hashed) when they are personal_types
RECOGNISED_TYPES = (EMAIL, PHONE)
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-]+")
_NOT_DIGIT = re.compile(r"[^0-9]")

HOW_TO_SET = (
    f"set {SECRET_VARIABLE} to a secret of at least {MIN_SECRET_LENGTH} characters "
    f"(e.g. `export {SECRET_VARIABLE}=$(openssl rand -hex 32)`), the same for every ingest "
    "and the service, so personal identifiers are hashed at ingestion"
)


class MissingSecret(UserError):
    """Clear personal identifiers arrived and no secret is set to hash them with."""


def is_clear(kind: str, value: str) -> bool:
    """True when `value` of identifier type `kind` is a clear e-mail address or phone number
    (an e-mail with '@'; a phone of '+', digits and separators holding 7-15 digits)."""
    if kind == EMAIL:
        return "@" in value
    if kind == PHONE:
        if not _PHONE_CHARS.fullmatch(value.strip()):
            return False
        return 7 <= len(_NOT_DIGIT.sub("", value)) <= 15
    return False


def normalise(kind: str, value: str) -> str:
    """The value hashed: an e-mail trimmed and lower-cased, a phone as '+' and its digits."""
    if kind == EMAIL:
        return value.strip().lower()
    if kind == PHONE:
        return "+" + _NOT_DIGIT.sub("", value)
    return value


def _blob(data: bytes) -> str:
    return "'" + "".join(f"\\x{b:02X}" for b in data) + "'::BLOB"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Pseudonymiser:
    """Hashes the clear identifiers of the `personal` types (those it recognises) with `secret`
    (None: no secret set, and any clear identifier met is an error saying how to set it)."""

    personal: tuple[str, ...]
    secret: bytes | None

    @classmethod
    def from_env(cls, personal_types: list[str]) -> Pseudonymiser:
        """The secret from NBA_PII_SECRET (unset or empty: none); a short one is an error."""
        raw = os.environ.get(SECRET_VARIABLE) or None
        if raw is not None and len(raw) < MIN_SECRET_LENGTH:
            raise UserError(
                f"{SECRET_VARIABLE} is {len(raw)} characters long; expected at least "
                f"{MIN_SECRET_LENGTH}"
            )
        kinds = tuple(t for t in personal_types if t in RECOGNISED_TYPES)
        return cls(kinds, None if raw is None else raw.encode("utf-8"))

    def digest(self, kind: str, value: str) -> str:
        """64 hex digits: HMAC-SHA256 of the normalised value under the secret."""
        if self.secret is None:
            raise MissingSecret(f"a clear {kind} identifier arrived: {HOW_TO_SET}")
        data = normalise(kind, value).encode("utf-8")
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def hash_key(self, key: str | None) -> str | None:
        """`type:value` with a clear personal value replaced by its digest; anything else as is."""
        if not key or not isinstance(key, str):
            return key
        kind, sep, value = key.strip().partition(KEY_SEPARATOR)
        kind = kind.strip().lower()  # `EMAIL: Ann@...` is Ann's e-mail too
        if not sep or kind not in self.personal or not is_clear(kind, value):
            return key
        return f"{kind}{KEY_SEPARATOR}{self.digest(kind, value)}"

    # ------------------------------------------------------------------ SQL (DuckDB)

    def _hmac_sql(self, value: str) -> str:
        assert self.secret is not None
        key = self.secret
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        ipad, opad = bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)
        inner = f"unhex(sha256({_blob(ipad)} || encode({value})))"
        return f"sha256({_blob(opad)} || {inner})"

    @staticmethod
    def clear_sql(kind: str, value: str) -> str:
        """SQL: `value` (of type `kind`) is clear (as `is_clear`)."""
        if kind == EMAIL:
            return f"contains({value}, '@')"
        digits = f"length(regexp_replace({value}, '[^0-9]', '', 'g'))"
        return (
            f"(regexp_full_match(trim({value}), {_lit(_PHONE_CHARS.pattern)}) "
            f"AND {digits} BETWEEN 7 AND 15)"
        )

    @staticmethod
    def normal_sql(kind: str, value: str) -> str:
        if kind == EMAIL:
            return f"lower(trim({value}))"
        return f"('+' || regexp_replace({value}, '[^0-9]', '', 'g'))"

    def key_sql(self, col: str, where: str = "'the data'") -> str:
        """SQL of the column `col` (VARCHAR `type:value`) with clear personal values hashed;
        without a secret a clear value stops the query with MissingSecret's message naming
        `where` (a SQL text expression: the file and row)."""
        if not self.personal:
            return col
        k = f"trim({col})"
        kind = f"lower(trim(split_part({k}, {_lit(KEY_SEPARATOR)}, 1)))"
        value = f"substr({k}, strpos({k}, {_lit(KEY_SEPARATOR)}) + 1)"
        cases = []
        for t in self.personal:
            test = f"{kind} = {_lit(t)} AND contains({k}, {_lit(KEY_SEPARATOR)}) AND " + (
                self.clear_sql(t, value)
            )
            if self.secret is None:
                message = f"{where} || ': a clear {t} identifier; {HOW_TO_SET}'"
                then = f"error({message})"
            else:
                then = f"{_lit(t + KEY_SEPARATOR)} || {self._hmac_sql(self.normal_sql(t, value))}"
            cases.append(f"WHEN {test} THEN {then}")
        return f"(CASE {' '.join(cases)} ELSE {col} END)"


def missing_secret_message(exc: Exception) -> str | None:
    """The one-line message of a DuckDB error raised by `key_sql` without a secret, else None."""
    text = str(exc)
    if HOW_TO_SET not in text:
        return None
    return text.split("Error: ", 1)[-1].strip()
