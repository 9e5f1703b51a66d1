"""zh-CN first pages (English switchable): Jinja2 shells + small vanilla JS calling the JSON API.

The HTML carries no data: every figure is fetched by the page's script with the user's bearer token
(kept in sessionStorage), so the pages need no cookies and no CSRF defence, and authorisation is
exactly the API's. Every asset is served from api/static (no CDN; ECharts is vendored under
api/static/vendor/echarts with its licence).
"""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from api.i18n import negotiate

router = APIRouter(include_in_schema=False)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))

#: UI strings for templates and scripts. Keys are shared by both languages (a test checks it).
UI: dict[str, dict[str, str]] = {
    "zh": {
        "app": "热线通 heatdesk", "agent": "客服工作台", "substations": "换热站看板", "supervisor": "调度/主管",
        "technician": "维修员", "customer": "用户自助", "login": "登录", "logout": "退出", "username": "用户名",
        "password": "密码", "search": "查询", "search_ph": "电话 / 姓名 / 户号 / 地址", "screen_pop": "来电弹屏",
        "caller_ph": "来电号码", "results": "查询结果", "household": "用户（户）", "code": "户号", "address": "地址",
        "name": "姓名", "phone": "电话", "area": "面积", "status": "状态", "floor": "楼层", "rooms": "房间",
        "sensors": "测点", "last": "最新", "verdicts": "逐日判定", "curve": "室温曲线（证据）", "tickets": "工单",
        "arrears": "欠费与催缴", "open_ticket": "新建工单", "evidence_pdf": "下载证据包 PDF", "masked": "已脱敏",
        "heating_active": "供热中", "heating_stopped": "报停", "no_results": "无结果", "loading": "加载中…",
        "not_available": "接口尚未提供", "error": "出错", "city_overview": "全市换热站总览", "supply": "供水",
        "return": "回水", "delta_t": "温差 ΔT", "flow": "流量", "pressure": "压力", "heat_power": "热功率",
        "outdoor": "室外温度", "alarms": "报警", "compliance": "达标率", "refresh": "自动刷新",
        "open_by_community": "各小区未结工单", "sla": "时限", "tech_load": "维修员负荷", "reports": "报表",
        "my_orders": "我的工单", "accept": "接单", "arrive": "到场", "photo": "拍照上传", "temp_test": "测温记录",
        "signature": "用户签字", "clear_btn": "清除", "resolve": "完工", "report_fault": "报修", "stop_heat": "申请报停",
        "resume_heat": "申请复热", "complain": "投诉", "bill": "账单与提醒", "my_temps": "我的室温记录",
        "submit": "提交", "description": "描述", "type": "类型", "priority": "优先级", "reported": "报修时间",
        "days": "天", "compliant": "达标", "non_compliant": "不达标", "unknown": "未知", "exempt": "免责",
        "devices": "设备接入", "rejects": "拒收记录", "connected": "在线", "disconnected": "离线",
        "lang_switch": "English", "role": "角色", "save": "保存", "room": "房间", "readings": "读数（℃，逗号分隔）",
        "outcome": "结果", "measured": "已测", "user_refused": "用户拒测", "company_late": "企业超时",
        "instrument": "仪器编号", "protocol": "测温规程", "my_household": "我的房屋", "amount": "金额",
        "due": "到期", "reason": "原因", "diagnosis": "诊断", "choose_substation": "选择换热站",
        "unassigned": "未分配", "load": "在办", "time": "时间", "dispatch": "自动派单", "kpis": "工单指标",
        "ticket": "工单详情", "height": "测点高度 m", "stability": "读数稳定", "cert": "检定证书号",
        "cert_expiry": "检定有效期", "staff_signature": "测温人签字", "note": "说明", "no_access": "当前角色不可查看",
    },
    "en": {
        "app": "heatdesk", "agent": "Agent console", "substations": "Substations", "supervisor": "Dispatch / supervisor",
        "technician": "Technician", "customer": "Self-service", "login": "Sign in", "logout": "Sign out",
        "username": "Username", "password": "Password", "search": "Search", "search_ph": "phone / name / account / address",
        "screen_pop": "Screen pop", "caller_ph": "caller number", "results": "Results", "household": "Household",
        "code": "Account", "address": "Address", "name": "Name", "phone": "Phone", "area": "Area", "status": "Status",
        "floor": "Floor", "rooms": "Rooms", "sensors": "Sensors", "last": "Latest", "verdicts": "Daily verdicts",
        "curve": "Room temperature (evidence)", "tickets": "Tickets", "arrears": "Arrears and dunning",
        "open_ticket": "Open ticket", "evidence_pdf": "Evidence pack PDF", "masked": "masked",
        "heating_active": "heating", "heating_stopped": "stopped (报停)", "no_results": "No results",
        "loading": "Loading…", "not_available": "endpoint not available yet", "error": "Error",
        "city_overview": "City overview", "supply": "Supply", "return": "Return", "delta_t": "ΔT", "flow": "Flow",
        "pressure": "Pressure", "heat_power": "Heat power", "outdoor": "Outdoor", "alarms": "Alarms",
        "compliance": "Compliance", "refresh": "auto refresh", "open_by_community": "Open tickets by community",
        "sla": "SLA", "tech_load": "Technician load", "reports": "Reports", "my_orders": "My orders",
        "accept": "Accept", "arrive": "Arrived", "photo": "Upload photo", "temp_test": "Temperature test",
        "signature": "Customer signature", "clear_btn": "Clear", "resolve": "Resolve", "report_fault": "Report a fault",
        "stop_heat": "Stop heating (报停)", "resume_heat": "Resume heating", "complain": "Complain",
        "bill": "Bill and reminders", "my_temps": "My room temperatures", "submit": "Submit",
        "description": "Description", "type": "Type", "priority": "Priority", "reported": "Reported", "days": "days",
        "compliant": "compliant", "non_compliant": "non-compliant", "unknown": "unknown", "exempt": "exempt",
        "devices": "Devices", "rejects": "Rejects", "connected": "connected", "disconnected": "disconnected",
        "lang_switch": "中文", "role": "Role", "save": "Save", "room": "Room", "readings": "Readings (℃, comma separated)",
        "outcome": "Outcome", "measured": "measured", "user_refused": "customer refused", "company_late": "company late",
        "instrument": "Instrument", "protocol": "Protocol", "my_household": "My home", "amount": "Amount",
        "due": "Due", "reason": "Reason", "diagnosis": "Diagnosis", "choose_substation": "Choose a substation",
        "unassigned": "unassigned", "load": "open", "time": "Time", "dispatch": "Auto-dispatch", "kpis": "Ticket KPIs",
        "ticket": "Ticket", "height": "Height m", "stability": "Stable readings", "cert": "Calibration cert.",
        "cert_expiry": "Cert. valid until", "staff_signature": "Tester's signature", "note": "Note",
        "no_access": "not available to your role",
    },
}

PAGES = {
    "agent": "agent.html", "substations": "substations.html", "supervisor": "supervisor.html",
    "technician": "technician.html", "customer": "customer.html", "devices": "devices.html",
}


def _render(request: Request, page: str) -> HTMLResponse:
    lang = negotiate(request)
    t = UI[lang]
    resp = TEMPLATES.TemplateResponse(request, PAGES[page], {
        "t": t, "lang": lang, "page": page, "ui_json": json.dumps(t, ensure_ascii=False),
        "html_lang": "zh-CN" if lang == "zh" else "en", "other_lang": "en" if lang == "zh" else "zh",
    })
    if request.query_params.get("lang"):
        resp.set_cookie("hd_lang", lang, max_age=365 * 24 * 3600, samesite="lax")
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data: blob:; "
                                               "style-src 'self' 'unsafe-inline'; script-src 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


@router.get("/", response_class=HTMLResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/agent", status_code=307)


@router.get("/ui", response_class=HTMLResponse)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/agent", status_code=307)


@router.get("/ui/{page}", response_class=HTMLResponse)
def ui_page(page: str, request: Request) -> HTMLResponse:
    if page not in PAGES:
        from api.errors import ApiError
        raise ApiError(404, "not_found")
    return _render(request, page)
