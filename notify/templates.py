"""zh-CN message templates: staff write ``{户主姓名}``-style placeholders, we render with Jinja2.

Templates live in ``notify/templates/<template_id>[.<segment>].txt``. The first lines are Jinja
comments carrying metadata::

    {# version: 2 #}
    {# subject: 供暖费缴费提醒 #}

Staff placeholders (single braces around Chinese words) are translated to Jinja variables at load
time; an unknown placeholder is a load error that names the file and the word, never a blank in a
message sent to a customer. Jinja tags (``{% if %}``) remain available.

Personal fields (name, address) are *not* rendered at enqueue time: they stay as their staff
placeholder in the stored body and are substituted only when sending (decrypted) and, masked,
in the evidence copy (R57–R60).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

#: staff placeholder → Jinja variable. Amounts are 元 (2 decimals), dates are local dates.
PLACEHOLDERS: dict[str, str] = {
    "户主姓名": "name",
    "地址": "address",
    "户号": "account_no",
    "公司名称": "company_name",
    "供暖季": "season",
    "应缴金额": "bill_amount",
    "已缴金额": "paid_amount",
    "欠费金额": "amount_due",
    "退费金额": "refund_amount",
    "违约金": "late_fee",
    "截止日期": "due_date",
    "缴费方式": "payment_methods",
    "客服电话": "service_phone",
    "分期金额": "instalment_amount",
    "分期日期": "instalment_date",
    "缓缴日期": "deferral_until",
    "工单号": "ticket_no",
    "预约时间": "appointment_time",
    "处理结果": "resolution",
    "消息": "message",
}
#: variables holding personal data: substituted only at send time (decrypted) or masked.
PERSONAL = {"name": "户主姓名", "address": "地址"}

_PLACEHOLDER_RE = re.compile(r"(?<!\{)\{([\u4e00-\u9fff]+)\}(?!\})")
_META_RE = re.compile(r"^\{#\s*(\w+)\s*:\s*(.*?)\s*#\}\s*$")


class TemplateError(ValueError):
    """A template is missing, malformed, or uses a placeholder we do not know."""


@dataclass(frozen=True)
class Template:
    template_id: str           # resolved id, including the segment variant if one was used
    version: int
    subject: str | None
    source: str                # Jinja source after placeholder translation


@dataclass(frozen=True)
class Rendered:
    template_id: str
    version: int
    subject: str | None
    body: str                  # personal fields still as {户主姓名}/{地址}


def staff_to_jinja(text: str, *, where: str = "template") -> str:
    """Translate ``{欠费金额}`` into ``{{ amount_due }}``; unknown words are an error."""
    def repl(m: re.Match) -> str:
        word = m.group(1)
        var = PLACEHOLDERS.get(word)
        if var is None:
            raise TemplateError(f"{where}: unknown placeholder {{{word}}}; known: {', '.join(PLACEHOLDERS)}")
        return "{{ " + var + " }}"
    return _PLACEHOLDER_RE.sub(repl, text)


def parse_template(template_id: str, text: str) -> Template:
    meta: dict[str, str] = {}
    lines = text.splitlines()
    while lines and (m := _META_RE.match(lines[0])):
        meta[m.group(1)] = m.group(2)
        lines.pop(0)
    if "version" not in meta or not meta["version"].isdigit():
        raise TemplateError(f"{template_id}: first lines must declare '{{# version: N #}}'")
    body = "\n".join(lines).strip("\n") + "\n"
    subject = meta.get("subject")
    return Template(template_id, int(meta["version"]),
                    staff_to_jinja(subject, where=template_id) if subject else None,
                    staff_to_jinja(body, where=template_id))


@lru_cache(maxsize=256)
def _load(path: Path, mtime_ns: int) -> Template:
    return parse_template(path.stem, path.read_text(encoding="utf-8"))


_RESOLVED: dict[tuple, tuple[float, Template]] = {}
_RECHECK_S = 2.0


def load_template(template_id: str, segment: str | None = None, *, directory: Path = TEMPLATE_DIR) -> Template:
    """The segment variant ``<id>.<segment>.txt`` when it exists, else ``<id>.txt``.

    Resolutions are cached for a couple of seconds (a dunning run renders 100 000 messages; edited
    templates are picked up on the next check, and their version number says which text was used).
    """
    key = (directory, template_id, segment)
    hit = _RESOLVED.get(key)
    if hit is not None and time.monotonic() - hit[0] < _RECHECK_S:
        return hit[1]
    tpl = _resolve(template_id, segment, directory)
    _RESOLVED[key] = (time.monotonic(), tpl)
    return tpl


def _resolve(template_id: str, segment: str | None, directory: Path) -> Template:
    if not re.fullmatch(r"[a-z0-9_.]+", template_id):
        raise TemplateError(f"bad template id {template_id!r}")
    candidates = ([directory / f"{template_id}.{segment}.txt"] if segment else []) + [directory / f"{template_id}.txt"]
    for path in candidates:
        if path.exists():
            return _load(path, path.stat().st_mtime_ns)
    raise TemplateError(f"no template {template_id!r} (segment {segment!r}) in {directory}")


def _fmt(value):
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.strftime("%Y年%m月%d日 %H:%M")
    if isinstance(value, date):
        return f"{value.year}年{value.month}月{value.day}日"
    return value


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
                          finalize=_fmt)


@lru_cache(maxsize=512)
def _compiled(source: str) -> jinja2.Template:
    """Compiling costs ~1 ms; a dunning run renders the same few templates 100 000 times."""
    return _ENV.from_string(source)


def render(template: Template, context: dict) -> Rendered:
    """Render everything except personal fields, which stay as staff placeholders."""
    ctx = {k: v for k, v in context.items() if k not in PERSONAL}
    ctx.update({var: "{" + word + "}" for var, word in PERSONAL.items()})
    try:
        body = _compiled(template.source).render(**ctx)
        subject = _compiled(template.subject).render(**ctx) if template.subject else None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"{template.template_id} v{template.version}: {e.message}") from e
    return Rendered(template.template_id, template.version, subject, body)


def fill_personal(text: str, personal: dict[str, str | None]) -> str:
    """Replace {户主姓名}/{地址} with the given values (real at send time, masked for evidence)."""
    for var, word in PERSONAL.items():
        fallback = "用户" if var == "name" else ""
        text = text.replace("{" + word + "}", personal.get(var) or fallback)
    return text


def all_template_ids(directory: Path = TEMPLATE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.txt"))
