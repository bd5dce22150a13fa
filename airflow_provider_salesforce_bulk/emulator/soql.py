"""SOQL as Bulk API 2.0 query jobs accept it: tokens, a recursive-descent parser and the statement tree.

Only the grammar lives here; names are resolved against the org and turned into SQL by
:mod:`.soql_compile`. Errors carry Salesforce's codes and texts, positions included
(``ERROR at Row:1:Column:12`` under a caret line), as real orgs answer a bad query at job creation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class SoqlError(Exception):
    """A query Salesforce refuses: ``code`` (``MALFORMED_QUERY``, ``INVALID_FIELD``...) and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def located(soql: str, pos: int, text: str) -> str:
    """Salesforce's message layout: the query line, a caret under ``pos``, then the row and column."""
    row = soql.count("\n", 0, pos) + 1
    start = soql.rfind("\n", 0, pos) + 1
    end = soql.find("\n", pos)
    line = soql[start : end if end >= 0 else len(soql)]
    column = pos - start + 1
    return f"\n{line}\n{' ' * (column - 1)}^\nERROR at Row:{row}:Column:{column}\n{text}"


def unsupported(what: str) -> SoqlError:
    """What Bulk API 2.0 refuses in a query (aggregates, OFFSET...): "X not supported in Bulk Query".

    Only the compound-field and subquery texts below were seen from real orgs; the others follow
    their pattern (see docs/emulator.md).
    """
    return SoqlError("API_ERROR", f"{what} not supported in Bulk Query")


def compound_refused() -> SoqlError:
    """Selecting an address (``BillingAddress``, ``MailingAddress``...): Bulk API 2.0's own answer."""
    return SoqlError("API_ERROR", "Selecting compound data not supported in Bulk Query")


def subquery_refused() -> SoqlError:
    """A parent-to-child subquery in the SELECT list, as a real org answers a CSV query job (API 59.0)."""
    return SoqlError(
        "API_ERROR", "Aggregate Relationships not supported in Bulk V2 Query with CSV content type"
    )


# -- tokens ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Token:
    """One token: ``kind`` is IDENT, STRING, NUMBER, DATE, DATETIME, OP, a punctuation mark or EOF."""

    kind: str
    text: str
    pos: int


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),.:])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"n": "\n", "N": "\n", "r": "\r", "R": "\r", "t": "\t", "T": "\t", "b": "\b", "B": "\b"}
_ESCAPES.update({"f": "\f", "F": "\f", '"': '"', "'": "'", "\\": "\\"})


def tokenize(soql: str) -> list[Token]:
    """Split ``soql`` into tokens.

    Raises
    ------
    SoqlError
        MALFORMED_QUERY for a character no token starts with, or an unterminated string.
    """
    tokens: list[Token] = []
    pos = 0
    match = _TOKEN.match
    while pos < len(soql):
        found = match(soql, pos)
        if found is None:
            if soql[pos] == "'":
                raise SoqlError(
                    "MALFORMED_QUERY", located(soql, pos, "line 1:0 mismatched character '<EOF>'")
                )
            raise SoqlError(
                "MALFORMED_QUERY", located(soql, pos, f"no viable alternative at character '{soql[pos]}'")
            )
        kind = found.lastgroup or ""
        if kind != "space":
            text = found.group()
            tokens.append(Token(kind.upper() if kind not in ("op", "punct") else text, text, pos))
        pos = found.end()
    tokens.append(Token("EOF", "<EOF>", len(soql)))
    return tokens


def decode_string(soql: str, token: Token, like: bool = False) -> str:
    """The value of a string token. In a LIKE pattern ``\\%`` and ``\\_`` stay escaped (``\\`` first)."""
    raw = token.text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = raw[i + 1]
        if code in "%_":
            out.append("\\" + code if like else code)
        elif code == "\\" and like:
            out.append("\\\\")
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
        elif code in "uU" and re.fullmatch(r"[0-9a-fA-F]{4}", raw[i + 2 : i + 6]):
            out.append(chr(int(raw[i + 2 : i + 6], 16)))
            i += 4
        else:
            raise SoqlError(
                "MALFORMED_QUERY",
                located(
                    soql,
                    token.pos + 1 + i,
                    f"Invalid string literal '{raw}'. "
                    f"Illegal character sequence '\\{code}' in string literal.",
                ),
            )
        i += 2
    return "".join(out)


# -- tree -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Path:
    """A field reference as written: ``Name``, ``Account.Name``, ``Account.Parent.Name``.

    In a condition it may be wrapped in a date function: ``CALENDAR_YEAR(CreatedDate)``. In the
    SELECT list, ``FIELDS(STANDARD)`` is the path ``("STANDARD",)`` with function ``FIELDS``.
    """

    parts: tuple[str, ...]
    pos: int
    function: str | None = None

    @property
    def text(self) -> str:
        """The path as written (the result column's header)."""
        return ".".join(self.parts)


@dataclasses.dataclass(frozen=True)
class Literal:
    """A value in a condition.

    ``kind`` is string, number, date, datetime, null, boolean or dateliteral (``value`` is then
    ``(NAME, n)`` with n None for literals without a number).
    """

    kind: str
    value: Any
    pos: int


@dataclasses.dataclass(frozen=True)
class Compare:
    """``path op value`` with op one of = != < <= > >= (``<>`` is read as ``!=``)."""

    path: Path
    op: str
    value: Literal


@dataclasses.dataclass(frozen=True)
class InList:
    """``path [NOT] IN (values)``, or a semi-join ``path [NOT] IN (SELECT field FROM ...)``."""

    path: Path
    values: tuple[Literal, ...]
    negated: bool
    subquery: Query | None = None


@dataclasses.dataclass(frozen=True)
class Like:
    """``path LIKE 'pattern'`` (pattern with ``\\%``/``\\_`` still escaped)."""

    path: Path
    pattern: str


@dataclasses.dataclass(frozen=True)
class Not:
    """``NOT condition``."""

    item: Condition


@dataclasses.dataclass(frozen=True)
class BoolOp:
    """Conditions joined by one operator: SOQL needs parentheses to mix AND and OR."""

    op: str
    items: tuple[Condition, ...]


Condition = Compare | InList | Like | Not | BoolOp


@dataclasses.dataclass(frozen=True)
class Order:
    """One ORDER BY item; ``nulls_first`` None means SOQL's default: nulls first, whatever the direction."""

    path: Path
    descending: bool
    nulls_first: bool | None


@dataclasses.dataclass(frozen=True)
class Query:
    """A parsed SELECT."""

    fields: tuple[Path, ...]
    object: str
    object_pos: int
    alias: str | None
    where: Condition | None
    order: tuple[Order, ...]
    limit: int | None


# -- parser ---------------------------------------------------------------------------------------

_AGGREGATES = frozenset({"COUNT", "COUNT_DISTINCT", "SUM", "AVG", "MIN", "MAX"})
_UNSUPPORTED_CLAUSES = {
    "GROUP": "GROUP BY",
    "HAVING": "HAVING",
    "OFFSET": "OFFSET",
    "WITH": "WITH",
    "FOR": "FOR",
    "USING": "USING SCOPE",
}
_OPS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
#: Date functions usable in conditions (the fiscal year is the calendar year, as in a new org).
DATE_FUNCTIONS = frozenset(
    {
        "CALENDAR_MONTH",
        "CALENDAR_QUARTER",
        "CALENDAR_YEAR",
        "DAY_IN_MONTH",
        "DAY_IN_WEEK",
        "DAY_IN_YEAR",
        "DAY_ONLY",
        "FISCAL_MONTH",
        "FISCAL_QUARTER",
        "FISCAL_YEAR",
        "HOUR_IN_DAY",
        "WEEK_IN_MONTH",
        "WEEK_IN_YEAR",
    }
)
#: Date literals that take ``:n``.
N_DATE_LITERALS = frozenset(
    {
        "LAST_N_DAYS",
        "NEXT_N_DAYS",
        "N_DAYS_AGO",
        "LAST_N_WEEKS",
        "NEXT_N_WEEKS",
        "LAST_N_MONTHS",
        "NEXT_N_MONTHS",
        "LAST_N_YEARS",
        "NEXT_N_YEARS",
    }
)
#: Date literals without a number.
DATE_LITERALS = frozenset(
    {
        "TODAY",
        "YESTERDAY",
        "TOMORROW",
        "LAST_WEEK",
        "THIS_WEEK",
        "NEXT_WEEK",
        "LAST_MONTH",
        "THIS_MONTH",
        "NEXT_MONTH",
        "LAST_90_DAYS",
        "NEXT_90_DAYS",
        "LAST_QUARTER",
        "THIS_QUARTER",
        "NEXT_QUARTER",
        "LAST_YEAR",
        "THIS_YEAR",
        "NEXT_YEAR",
    }
)


class _Parser:
    def __init__(self, soql: str) -> None:
        self.soql = soql
        self.tokens = tokenize(soql)
        self.i = 0
        self.nested = False

    # helpers

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def word(self, token: Token | None = None) -> str:
        token = token or self.tok
        return token.text.upper() if token.kind == "IDENT" else ""

    def unexpected(self, token: Token | None = None) -> SoqlError:
        token = token or self.tok
        return SoqlError(
            "MALFORMED_QUERY", located(self.soql, token.pos, f"unexpected token: '{token.text}'")
        )

    def take(self) -> Token:
        token = self.tok
        self.i += 1
        return token

    def expect_word(self, word: str) -> Token:
        if self.word() != word:
            raise self.unexpected()
        return self.take()

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.unexpected()
        return self.take()

    def comma_list(self, item: Callable[[], _T]) -> list[_T]:
        """One or more ``item``s separated by commas (select list, ORDER BY, IN values)."""
        items = [item()]
        while self.tok.kind == ",":
            self.take()
            items.append(item())
        return items

    # grammar

    def query(self, nested: bool = False) -> Query:
        start = self.tok
        self.expect_word("SELECT")
        fields = self.comma_list(self.select_item)
        self.expect_word("FROM")
        if self.tok.kind != "IDENT":
            raise self.unexpected()
        obj = self.take()
        alias = None
        if self.tok.kind == "IDENT" and self.word() not in ("WHERE", "ORDER", "LIMIT", *_UNSUPPORTED_CLAUSES):
            alias = self.take().text  # FROM Contact c
        self.refuse_clause()
        where = None
        if self.word() == "WHERE":
            self.take()
            where = self.condition()
        self.refuse_clause()
        order: list[Order] = []
        if self.word() == "ORDER":
            self.take()
            self.expect_word("BY")
            order = self.comma_list(self.order_item)
        self.refuse_clause()
        limit = None
        if self.word() == "LIMIT":
            self.take()
            token = self.expect("NUMBER")
            if not token.text.isdigit():
                raise self.unexpected(token)
            limit = int(token.text)
        self.refuse_clause()
        if self.tok.kind != (")" if nested else "EOF"):
            raise self.unexpected()
        if nested and (len(fields) != 1 or order or limit is not None):
            raise SoqlError(
                "MALFORMED_QUERY",
                located(
                    self.soql, start.pos, "A semi join subquery selects one Id or reference field, unordered"
                ),
            )
        if nested and fields[0].function == "FIELDS":
            raise self.unexpected(self.tokens[self.i - 1])
        return Query(tuple(fields), obj.text, obj.pos, alias, where, tuple(order), limit)

    def refuse_clause(self) -> None:
        clause = _UNSUPPORTED_CLAUSES.get(self.word())
        if clause == "GROUP BY":
            raise unsupported("Aggregate queries")
        if clause in ("OFFSET", "FOR", "USING SCOPE", "WITH", "HAVING"):
            raise unsupported(f"{clause} clause")

    def select_item(self) -> Path:
        if self.tok.kind == "(":
            if self.word(self.peek()) == "SELECT":
                raise subquery_refused()
            raise self.unexpected()
        word = self.word()
        if word == "TYPEOF":
            raise unsupported("TYPEOF")
        if self.peek().kind == "(" and self.tok.kind == "IDENT":
            if word in _AGGREGATES:
                raise unsupported("Aggregate queries")
            if word == "FIELDS":
                return self.fields_function()
            raise self.unexpected(self.peek())
        return self.path()

    def fields_function(self) -> Path:
        """``FIELDS(ALL|STANDARD|CUSTOM)``, kept as a path whose function is FIELDS (expanded later)."""
        name = self.take()
        self.expect("(")
        group = self.expect("IDENT")
        if group.text.upper() not in ("ALL", "STANDARD", "CUSTOM"):
            raise self.unexpected(group)
        self.expect(")")
        return Path((group.text.upper(),), name.pos, "FIELDS")

    def path(self) -> Path:
        first = self.expect("IDENT")
        parts = [first.text]
        while self.tok.kind == ".":
            self.take()
            parts.append(self.expect("IDENT").text)
        return Path(tuple(parts), first.pos)

    def order_item(self) -> Order:
        path = self.path()
        descending = False
        if self.word() in ("ASC", "DESC"):
            descending = self.take().text.upper() == "DESC"
        nulls_first = None
        if self.word() == "NULLS":
            self.take()
            if self.word() not in ("FIRST", "LAST"):
                raise self.unexpected()
            nulls_first = self.take().text.upper() == "FIRST"
        return Order(path, descending, nulls_first)

    def condition(self) -> Condition:
        items = [self.term()]
        op = None
        while self.word() in ("AND", "OR"):
            if op is not None and self.word() != op:
                raise self.unexpected()  # SOQL refuses a mix of AND and OR without parentheses
            op = self.take().text.upper()
            items.append(self.term())
        return items[0] if op is None else BoolOp(op, tuple(items))

    def term(self) -> Condition:
        if self.word() == "NOT":
            self.take()
            return Not(self.term())
        if self.tok.kind == "(":
            self.take()
            inner = self.condition()
            self.expect(")")
            return inner
        if self.word() in DATE_FUNCTIONS and self.peek().kind == "(":
            name = self.take()
            self.take()
            inner_path = self.path()
            self.expect(")")
            path = Path(inner_path.parts, name.pos, name.text.upper())
        else:
            path = self.path()
        word = self.word()
        if self.tok.kind in _OPS:
            op = _OPS[self.take().text]
            return Compare(path, op, self.value())
        if word == "LIKE":
            self.take()
            token = self.expect("STRING")
            return Like(path, decode_string(self.soql, token, like=True))
        negated = False
        if word == "NOT" and self.word(self.peek()) == "IN":
            self.take()
            negated = True
            word = "IN"
        if word == "IN":
            self.take()
            if self.tok.kind == "(" and self.word(self.peek()) == "SELECT":
                if self.nested:
                    raise SoqlError(
                        "MALFORMED_QUERY",
                        located(
                            self.soql, self.peek().pos, "Nesting of semi join sub-selects is not supported"
                        ),
                    )
                self.take()
                self.nested = True
                subquery = self.query(nested=True)
                self.nested = False
                self.expect(")")
                return InList(path, (), negated, subquery)
            self.expect("(")
            values = self.comma_list(self.value)
            self.expect(")")
            return InList(path, tuple(values), negated)
        if word in ("INCLUDES", "EXCLUDES"):
            raise unsupported(f"{word} on multi-select picklists")
        raise self.unexpected()

    def value(self) -> Literal:
        token = self.take()
        kind = token.kind
        if kind == "STRING":
            return Literal("string", decode_string(self.soql, token), token.pos)
        if kind == "NUMBER":
            text = token.text
            number: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
            return Literal("number", number, token.pos)
        if kind in ("DATE", "DATETIME"):
            return Literal(kind.lower(), token.text, token.pos)
        word = self.word(token)
        if word == "NULL":
            return Literal("null", None, token.pos)
        if word in ("TRUE", "FALSE"):
            return Literal("boolean", word == "TRUE", token.pos)
        if word in DATE_LITERALS:
            return Literal("dateliteral", (word, None), token.pos)
        if word in N_DATE_LITERALS:
            if self.tok.kind != ":":
                raise self.unexpected()
            self.take()
            count = self.expect("NUMBER")
            if not count.text.isdigit():
                raise self.unexpected(count)
            return Literal("dateliteral", (word, int(count.text)), token.pos)
        raise self.unexpected(token)


def parse(soql: str) -> Query:
    """Parse one SELECT statement.

    Raises
    ------
    SoqlError
        MALFORMED_QUERY with Salesforce's located message, or API_ERROR for what Bulk API 2.0
        does not support (nested queries, aggregates, GROUP BY, OFFSET, TYPEOF, FIELDS()).
    """
    return _Parser(soql).query()
