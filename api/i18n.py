"""zh-CN first, English switchable: language negotiation and the message catalogue for API errors.

Language order: ``?lang=`` (zh / zh-CN / en), then the ``hd_lang`` cookie (set by the pages' switch),
then ``Accept-Language``; default zh-CN (our users are Chinese heating companies).
"""
from __future__ import annotations

from starlette.requests import Request

DEFAULT_LANG = "zh"
LANGS = ("zh", "en")


def _norm(tag: str | None) -> str | None:
    if not tag:
        return None
    tag = tag.strip().lower()
    if tag.startswith("zh"):
        return "zh"
    if tag.startswith("en"):
        return "en"
    return None


def negotiate(request: Request) -> str:
    q = _norm(request.query_params.get("lang"))
    if q:
        return q
    c = _norm(request.cookies.get("hd_lang"))
    if c:
        return c
    header = request.headers.get("accept-language", "")
    best: tuple[float, str] | None = None
    for part in header.split(","):
        bits = part.strip().split(";")
        lang = _norm(bits[0])
        if not lang:
            continue
        weight = 1.0
        for b in bits[1:]:
            b = b.strip()
            if b.startswith("q="):
                try:
                    weight = float(b[2:])
                except ValueError:
                    weight = 0.0
        if best is None or weight > best[0]:
            best = (weight, lang)
    return best[1] if best else DEFAULT_LANG


#: Problem titles by code. ``detail`` strings may use str.format fields.
MESSAGES: dict[str, dict[str, str]] = {
    "bad_request": {"zh": "请求有误", "en": "Bad request"},
    "unauthenticated": {"zh": "未登录或登录已过期", "en": "Not authenticated or session expired"},
    "invalid_credentials": {"zh": "用户名或密码错误", "en": "Wrong username or password"},
    "forbidden": {"zh": "无权访问", "en": "Forbidden"},
    "forbidden_role": {"zh": "当前角色无权执行此操作", "en": "Your role may not do this"},
    "forbidden_scope": {"zh": "超出数据权限范围（分公司）", "en": "Outside your data scope (branch)"},
    "not_found": {"zh": "未找到", "en": "Not found"},
    "household_not_found": {"zh": "未找到该用户（户）", "en": "Household not found"},
    "substation_not_found": {"zh": "未找到该换热站", "en": "Substation not found"},
    "device_not_found": {"zh": "未找到该设备", "en": "Device not found"},
    "method_not_allowed": {"zh": "不支持的请求方法", "en": "Method not allowed"},
    "conflict": {"zh": "数据冲突", "en": "Conflict"},
    "validation_error": {"zh": "参数校验失败", "en": "Request validation failed"},
    "range_too_long": {"zh": "时间范围过长（最多 {max_days} 天）", "en": "Time range too long (at most {max_days} days)"},
    "range_out_of_bounds": {"zh": "时间超出范围（2000 年至今后一年）", "en": "Time outside 2000 … one year ahead"},
    "range_inverted": {"zh": "开始时间必须早于结束时间", "en": "Start must be before end"},
    "query_required": {"zh": "请输入电话、姓名、户号或地址", "en": "Give a phone, name, account code or address"},
    "too_many_requests": {"zh": "请求过于频繁", "en": "Too many requests"},
    "service_unavailable": {"zh": "服务暂不可用（数据库不可达）", "en": "Service unavailable (database unreachable)"},
    "internal_error": {"zh": "服务器内部错误", "en": "Internal server error"},
    "pii_key_missing": {"zh": "未配置个人信息加密密钥", "en": "Field encryption key is not configured"},
}

STATUS_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 422: "validation_error", 429: "too_many_requests", 503: "service_unavailable",
    500: "internal_error",
}


def t(code: str, lang: str, **params) -> str:
    entry = MESSAGES.get(code)
    if entry is None:
        return code
    text = entry.get(lang) or entry[DEFAULT_LANG]
    try:
        return text.format(**params) if params else text
    except (KeyError, IndexError):
        return text
