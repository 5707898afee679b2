"""A Moodle 4.5 site for the tests: the REST web-service protocol over a real socket on 127.0.0.1.

It speaks what ../shared/reference/moodle-ws.md (section 0b) saw a real site do, for the functions
delivery uses: form-encoded nested parameters cut silently past `max_input_vars`, `wstoken` checks,
errors as Moodle's exception JSON with HTTP 200, `null` bodies, all-or-nothing create batches, the
same bare `invalidparameter` for a taken username, a taken email and an upper-case username,
duplicate user idnumbers accepted, suspended enrolments listed unless `onlyactive`. It keeps its
state (`users`, `categories`, `courses`, `enrolments`) so a test asserts what Moodle ended up with,
logs every call in `calls`, and fails on demand (`fail(...)`, `latency`).

    with running(max_input_vars=1000) as moodle:
        moodle.fail("status", status=503)       # the next call answers 503
        ...; assert [u["username"] for u in moodle.users.values()] == [...]

`python -m tests.moodle_fake --port 8765` serves one for benches and manual use.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl

from tests.threaded_server import serving

RELEASE = "4.5.11+ (Build: 20260501)"
ROLES = {1: "manager", 3: "editingteacher", 4: "teacher", 5: "student"}
ASSIGNABLE = {3, 4, 5}
USER_FIELDS = {
    "username": "u",
    "firstname": "s",
    "lastname": "s",
    "email": "s",
    "idnumber": "s",
    "auth": "s",
    "password": "s",
    "createpassword": "b",
    "lang": "s",
    "city": "s",
    "country": "s",
    "institution": "s",
    "department": "s",
    "phone1": "s",
    "description": "s",
    "customfields": "l",
    "preferences": "l",
}
COURSE_FIELDS = {
    "fullname": "s",
    "shortname": "s",
    "categoryid": "i",
    "idnumber": "s",
    "summary": "s",
    "format": "s",
    "startdate": "i",
    "enddate": "i",
    "visible": "i",
    "customfields": "l",
}
CATEGORY_FIELDS = {
    "name": "s",
    "parent": "i",
    "idnumber": "s",
    "description": "s",
    "descriptionformat": "i",
    "theme": "s",
}
FUNCTIONS = (
    "core_webservice_get_site_info",
    "core_user_create_users",
    "core_user_update_users",
    "core_user_get_users_by_field",
    "core_user_get_users",
    "core_course_create_categories",
    "core_course_update_categories",
    "core_course_get_categories",
    "core_course_create_courses",
    "core_course_update_courses",
    "core_course_get_courses_by_field",
    "core_enrol_get_enrolled_users",
    "enrol_manual_enrol_users",
    "enrol_manual_unenrol_users",
)
ENROL_FIELDS = {"roleid": "i", "userid": "i", "courseid": "i", "timestart": "i", "timeend": "i", "suspend": "i"}


class WsException(Exception):
    """What Moodle's exception handler serialises: class, errorcode, message, and debuginfo."""

    def __init__(self, exception: str, errorcode: str, message: str, debuginfo: str | None = None) -> None:
        super().__init__(message)
        self.body = {"exception": exception, "errorcode": errorcode, "message": message}
        self.debuginfo = debuginfo


def invalid(debuginfo: str) -> WsException:
    return WsException("invalid_parameter_exception", "invalidparameter", "Invalid parameter value detected", debuginfo)


def parse_php(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`users[0][username]=a` -> {"users": {"0": {"username": "a"}}}, as PHP builds $_POST."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not match:
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = result
        for part in path[:-1]:
            part = part or str(len(node))  # `values[]` appends
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[path[-1] or str(len(node))] = value
    return result


def clean(value: Any, kind: str, name: str) -> Any:
    """validate_param: a value that cleaning would change is rejected."""
    if kind == "l":
        if not isinstance(value, dict):
            raise invalid(f"Only arrays accepted. The bad value is: '{value}'")
        return list(value.values())
    if not isinstance(value, str):
        raise invalid("Scalar type expected, array or object received.")
    expected = {"i": "int", "b": "bool", "u": "username", "s": "raw"}[kind]
    if (kind == "i" and not re.fullmatch(r"-?\d+", value)) or (
        kind == "b" and value not in ("0", "1", "true", "false")
    ):
        raise invalid(
            f'Invalid external api parameter: the value is "{value}", the server was expecting "{expected}" type'
        )
    if kind == "u" and re.sub(r"[^a-z0-9_.@-]", "", value.lower()) != value:
        raise invalid(
            f'Invalid external api parameter: the value is "{value}", the server was expecting "{expected}" type'
        )
    return int(value) if kind == "i" else value in ("1", "true") if kind == "b" else value


def structure(value: Any, fields: dict[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    """validate_parameters for one external_single_structure."""
    if not isinstance(value, dict):
        raise invalid(f"Only arrays accepted. The bad value is: '{value}'")
    for key in required:
        if key not in value:
            raise invalid(f"Missing required key in single structure: {key}")
    unexpected = [key for key in value if key not in fields]
    if unexpected:
        raise invalid(f"Unexpected keys ({', '.join(unexpected)}) detected in parameter array.")
    return {key: clean(item, fields[key], key) for key, item in value.items()}


def many(params: dict[str, Any], name: str, fields: dict[str, str], required: tuple[str, ...]) -> list[dict[str, Any]]:
    """validate_parameters for `name[i][...]`, an external_multiple_structure of single structures."""
    if name not in params:
        raise invalid(f"Missing required key in single structure: {name}")
    return [structure(item, fields, required) for item in clean(params[name], "l", name)]


@dataclass
class Fault:
    kind: str  # "status": HTML with that status; "slow": answer after `seconds`; "reset": TCP RST; "error": exception JSON
    times: int
    function: str | None
    status: int = 503
    seconds: float = 5.0
    applied: bool = False  # whether the call takes effect before the failure (a "slow" call always does)
    errorcode: str = "sitemaintenance"


@dataclass
class Call:
    function: str
    params: dict[str, Any]
    variables: int  # key=value pairs Moodle kept, after the max_input_vars cut
    outcome: str = "ok"  # "ok", the errorcode, or "fault:<kind>"


@dataclass
class MoodleFake:
    token: str = "fake-token-0123456789abcdef"
    functions: AbstractSet[str] | None = None  # the token's service; None = every function the fake knows
    max_input_vars: int = 5000
    debug: bool = False  # debuginfo in error answers, as with debugging on
    latency: float = 0.0  # seconds added to every call
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    categories: dict[int, dict[str, Any]] = field(default_factory=dict)
    courses: dict[int, dict[str, Any]] = field(default_factory=dict)
    enrolments: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # (courseid, userid) -> state
    calls: list[Call] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    url: str = ""
    _next_id: dict[str, int] = field(default_factory=lambda: {"user": 3, "category": 2, "course": 2})
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.users[2] = {
            "id": 2,
            "username": "admin",
            "firstname": "Admin",
            "lastname": "User",
            "email": "admin@example.com",
            "idnumber": "",
            "auth": "manual",
            "suspended": False,
        }
        self.categories[1] = {"id": 1, "name": "Category 1", "idnumber": "", "parent": 0, "description": ""}
        self.courses[1] = {
            "id": 1,
            "fullname": "Fake School",
            "shortname": "fake",
            "categoryid": 0,
            "idnumber": "",
            "visible": 1,
            "format": "site",
            "startdate": 0,
            "enddate": 0,
        }

    # --- test controls -------------------------------------------------------------------------
    def fail(self, kind: str, *, times: int = 1, function: str | None = None, **options: Any) -> None:
        """Make the next `times` calls (of `function`, or any) fail: see Fault."""
        self.faults.append(Fault(kind, times, function, **options))

    def add_user(self, **fields: Any) -> int:
        """A user made in Moodle by hand, not through the web services."""
        user = {"idnumber": "", "auth": "manual", "suspended": False, "firstname": "F", "lastname": "L", **fields}
        return self._insert("user", self.users, user)

    def called(self, function: str) -> list[Call]:
        return [call for call in self.calls if call.function == function]

    # --- the protocol ----------------------------------------------------------------------------
    def answer(self, query: str, body: str) -> tuple[Fault | None, Any, str]:
        """Run one request: (the fault to act out or None, the JSON value to send, the outcome for the log)."""
        pairs = parse_qsl(body, keep_blank_values=True)
        kept = pairs[: self.max_input_vars]  # PHP drops the rest with only a warning in its log
        params = {**parse_php(parse_qsl(query, keep_blank_values=True)), **parse_php(kept)}
        function = str(params.pop("wsfunction", ""))
        token, fmt = params.pop("wstoken", None), params.pop("moodlewsrestformat", "xml")
        call = Call(function, params, len(kept))
        self.calls.append(call)
        fault = next((f for f in self.faults if f.function in (None, function) and f.times > 0), None)
        if fault is not None:
            fault.times -= 1
            call.outcome = f"fault:{fault.kind}"
            if fault.kind == "error":
                return (
                    None,
                    {
                        "exception": "moodle_exception",
                        "errorcode": fault.errorcode,
                        "message": f"error/{fault.errorcode}",
                    },
                    call.outcome,
                )
            if not (fault.applied or fault.kind == "slow"):
                return fault, None, call.outcome
        try:
            if fmt != "json":
                raise WsException(
                    "moodle_exception", "xmlnotsupported", "This fake answers moodlewsrestformat=json only"
                )
            if token != self.token:
                raise WsException("moodle_exception", "invalidtoken", "Invalid token - token not found")
            handler: Callable[[dict[str, Any]], Any] | None = getattr(self, function, None)
            if function not in FUNCTIONS or handler is None:
                raise WsException(
                    "dml_missing_record_exception",
                    "invalidrecord",
                    "Can't find data record in database table external_functions.",
                )
            if self.functions is not None and function not in self.functions:
                raise WsException(
                    "webservice_access_exception",
                    "accessexception",
                    "Access control exception",
                    "Access to the function " + function + "() is not allowed.",
                )
            with self._lock:
                result = handler(params)
        except WsException as exc:
            body_out = dict(exc.body)
            if self.debug and exc.debuginfo:
                body_out["debuginfo"] = exc.debuginfo
            call.outcome = call.outcome if fault else exc.body["errorcode"]
            return fault, body_out, call.outcome
        return fault, result, call.outcome

    def _insert(self, kind: str, table: dict[int, dict[str, Any]], row: dict[str, Any]) -> int:
        row["id"] = self._next_id[kind]
        self._next_id[kind] += 1
        table[row["id"]] = row
        return int(row["id"])

    # --- the functions (self is the site, its lock held) -----------------------------------------
    def core_webservice_get_site_info(self, params: dict[str, Any]) -> Any:
        names = sorted(self.functions if self.functions is not None else FUNCTIONS)
        return {
            "sitename": "Fake School",
            "username": "admin",
            "firstname": "Admin",
            "lastname": "User",
            "fullname": "Admin User",
            "lang": "en",
            "userid": 2,
            "siteurl": self.url,
            "userpictureurl": "",
            "functions": [{"name": name, "version": "2024100711.00"} for name in names],
            "downloadfiles": 0,
            "uploadfiles": 0,
            "release": RELEASE,
            "version": "2024100711.00",
            "mobilecssurl": "",
            "advancedfeatures": [],
            "usercanmanageownfiles": True,
            "userquota": 0,
            "usermaxuploadfilesize": -1,
            "userhomepage": 1,
            "siteid": 1,
            "theme": "boost",
        }

    def core_user_create_users(self, params: dict[str, Any]) -> Any:
        users = many(params, "users", USER_FIELDS, ("username", "firstname", "lastname", "email"))
        taken_names = {u["username"] for u in self.users.values()}
        taken_emails = {u["email"].lower() for u in self.users.values()}
        for user in users:  # every check before any insert: one transaction
            if user["username"] in taken_names:
                raise invalid(f"Username already exists: {user['username']}")
            if user["email"].lower() in taken_emails:
                raise invalid(f"Email address already exists: {user['email']}")
            if "@" not in user["email"]:
                raise invalid(f"Email address is invalid: {user['email']}")
            if not user.get("password") and not user.get("createpassword"):
                raise invalid("Invalid password: you must provide a password, or set createpassword.")
            taken_names.add(user["username"])
            taken_emails.add(user["email"].lower())
        created = []
        for user in users:
            row = {"idnumber": "", "auth": "manual", "suspended": False, **user}
            row.pop("password", None), row.pop("createpassword", None)
            created.append({"id": self._insert("user", self.users, row), "username": user["username"]})
        return created

    def core_user_update_users(self, params: dict[str, Any]) -> Any:
        users = many(params, "users", {**USER_FIELDS, "id": "i", "suspended": "b"}, ("id",))
        warnings = []
        for user in users:
            row = self.users.get(user["id"])
            clash = [
                u
                for u in self.users.values()
                if u["id"] != user["id"]
                and (u["email"].lower() == str(user.get("email", "")).lower() or u["username"] == user.get("username"))
            ]
            if row is None:
                warnings.append(
                    {"item": "user", "itemid": user["id"], "warningcode": "invaliduserid", "message": "Invalid user ID"}
                )
            elif clash:  # the code for a taken username is inferred: the reference names only the email one
                warnings.append(
                    {
                        "item": "user",
                        "itemid": user["id"],
                        "warningcode": "useremailduplicate",
                        "message": "Duplicate email address or username",
                    }
                )
            else:
                row.update({k: v for k, v in user.items() if k not in ("password", "createpassword")})
        return {"warnings": warnings}

    def core_user_get_users_by_field(self, params: dict[str, Any]) -> Any:
        name = params.get("field")
        if name not in ("id", "idnumber", "username", "email"):
            raise WsException(
                "coding_exception",
                "codingerror",
                "Coding error detected, it must be fixed by a programmer: invalid field parameter",
                f"The field {name} is not supported",
            )
        values = clean(params.get("values", {}), "l", "values")
        values = [clean(v, {"id": "i", "username": "u"}.get(name, "s"), "values") for v in values]
        found = [u for u in self.users.values() if u[name] in values]
        return [
            {
                **{k: v for k, v in u.items() if k not in ("customfields", "preferences") and (k != "idnumber" or v)},
                "fullname": f"{u['firstname']} {u['lastname']}",
                "confirmed": True,
            }
            for u in found
        ]

    def core_user_get_users(self, params: dict[str, Any]) -> Any:
        """Users matching every criterion: id, idnumber, username and auth exactly; email, firstname and
        lastname as Moodle's case-insensitive LIKE (`%` any text, `_` any one character)."""
        criteria = many(params, "criteria", {"key": "s", "value": "s"}, ("key", "value"))
        found, warnings = list(self.users.values()), []
        for criterion in criteria:
            key, value = criterion["key"], criterion["value"]
            if key in ("email", "firstname", "lastname"):
                like = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in value)
                found = [u for u in found if re.fullmatch(like, str(u.get(key, "")), re.IGNORECASE | re.DOTALL)]
            elif key in ("id", "idnumber", "username", "auth"):
                found = [u for u in found if str(u.get(key, "")) == value]
            else:
                warnings.append(
                    {
                        "item": key,
                        "warningcode": "invalidfieldparameter",
                        "message": f"The search key '{key}' is not supported, look at the web service documentation",
                    }
                )
        users = [
            {
                **{k: v for k, v in u.items() if k not in ("customfields", "preferences") and (k != "idnumber" or v)},
                "fullname": f"{u['firstname']} {u['lastname']}",
            }
            for u in sorted(found, key=lambda u: int(u["id"]))
        ]
        return {"users": users, "warnings": warnings}

    def core_course_create_categories(self, params: dict[str, Any]) -> Any:
        categories = many(params, "categories", CATEGORY_FIELDS, ("name",))
        idnumbers = {c["idnumber"] for c in self.categories.values() if c["idnumber"]}
        new: list[dict[str, Any]] = []
        for category in categories:
            if category.get("parent", 0) and category["parent"] not in self.categories:
                raise WsException("moodle_exception", "unknowcategory", "Unknown category")
            if category.get("idnumber") and category["idnumber"] in idnumbers:
                raise WsException(
                    "moodle_exception", "categoryidnumbertaken", "ID number is already used for another category"
                )
            idnumbers.add(category.get("idnumber", ""))
            new.append({"idnumber": "", "parent": 0, "description": "", "visible": 1, **category})
        return [{"id": self._insert("category", self.categories, c), "name": c["name"]} for c in new]

    def core_course_update_categories(self, params: dict[str, Any]) -> Any:
        categories = many(params, "categories", {**CATEGORY_FIELDS, "id": "i"}, ("id",))
        for category in categories:
            if category["id"] not in self.categories:
                raise WsException(
                    "dml_missing_record_exception",
                    "invalidrecord",
                    "Can't find data record in database table course_categories.",
                )
            if category.get("idnumber") and any(
                c["idnumber"] == category["idnumber"] and c["id"] != category["id"] for c in self.categories.values()
            ):
                raise WsException(
                    "moodle_exception", "categoryidnumbertaken", "ID number is already used for another category"
                )
        for category in categories:
            self.categories[category["id"]].update(category)
        return None

    def core_course_get_categories(self, params: dict[str, Any]) -> Any:
        criteria = [
            structure(c, {"key": "s", "value": "s"}, ("key", "value"))
            for c in clean(params.get("criteria", {}), "l", "criteria")
        ]
        found = [c for c in self.categories.values() if all(str(c.get(x["key"])) == x["value"] for x in criteria)]
        return [
            {
                **c,
                "idnumber": c["idnumber"] or None,
                "descriptionformat": 1,
                "coursecount": 0,
                "depth": 1,
                "path": f"/{c['id']}",
                "visibleold": 1,
                "theme": "",
            }
            for c in found
        ]

    def core_course_create_courses(self, params: dict[str, Any]) -> Any:
        courses = many(params, "courses", COURSE_FIELDS, ("fullname", "shortname", "categoryid"))
        shortnames = {c["shortname"] for c in self.courses.values()}
        idnumbers = {c["idnumber"] for c in self.courses.values() if c["idnumber"]}
        for course in courses:
            if course["categoryid"] not in self.categories:
                raise WsException(
                    "moodle_exception",
                    "errorcatcontextnotvalid",
                    f"You cannot execute functions in the category context (category id: {course['categoryid']})",
                )
            if course["shortname"] in shortnames:
                raise WsException(
                    "moodle_exception",
                    "shortnametaken",
                    f"Short name is already used for another course ({course['shortname']})",
                )
            if course.get("idnumber") and course["idnumber"] in idnumbers:
                raise WsException(
                    "moodle_exception",
                    "courseidnumbertaken",
                    f"ID number is already used for another course ({course['idnumber']})",
                )
            shortnames.add(course["shortname"])
            idnumbers.add(course.get("idnumber", ""))
        rows = [{"idnumber": "", "visible": 1, "format": "topics", "startdate": 0, "enddate": 0, **c} for c in courses]
        return [{"id": self._insert("course", self.courses, row), "shortname": row["shortname"]} for row in rows]

    def core_course_update_courses(self, params: dict[str, Any]) -> Any:
        courses = many(params, "courses", {**COURSE_FIELDS, "id": "i"}, ("id",))
        warnings = []
        for course in courses:
            others = [c for c in self.courses.values() if c["id"] != course["id"]]
            if course["id"] not in self.courses:
                code, message = "invalidrecord", "Can't find data record in database table course."
            elif any(c["shortname"] == course.get("shortname") for c in others):
                code, message = (
                    "shortnametaken",
                    f"Short name is already used for another course ({course['shortname']})",
                )
            elif course.get("idnumber") and any(c["idnumber"] == course["idnumber"] for c in others):
                code, message = (
                    "courseidnumbertaken",
                    f"ID number is already used for another course ({course['idnumber']})",
                )
            else:
                self.courses[course["id"]].update(course)
                continue
            warnings.append({"item": "course", "itemid": course["id"], "warningcode": code, "message": message})
        return {"warnings": warnings}

    def core_course_get_courses_by_field(self, params: dict[str, Any]) -> Any:
        name, value = params.get("field", ""), str(params.get("value", ""))
        column = {
            "": None,
            "id": "id",
            "ids": "id",
            "shortname": "shortname",
            "idnumber": "idnumber",
            "category": "categoryid",
        }
        if name not in column:
            raise invalid("Invalid field name")
        wanted = value.split(",") if name == "ids" else [value]
        found = [
            c for c in self.courses.values() if c["id"] != 1 and (not name or str(c[cast(str, column[name])]) in wanted)
        ]
        return {
            "courses": [
                {
                    **c,
                    "displayname": c["fullname"],
                    "categoryname": self.categories[c["categoryid"]]["name"],
                    "summary": c.get("summary", ""),
                    "summaryformat": 1,
                }
                for c in found
            ],
            "warnings": [],
        }

    def core_enrol_get_enrolled_users(self, params: dict[str, Any]) -> Any:
        courseid = clean(params.get("courseid", ""), "i", "courseid")
        options = [
            structure(o, {"name": "s", "value": "s"}, ("name", "value"))
            for o in clean(params.get("options", {}), "l", "options")
        ]
        onlyactive = any(o["name"] == "onlyactive" and o["value"] in ("1", "true") for o in options)
        if courseid not in self.courses:
            raise WsException(
                "dml_missing_record_exception", "invalidrecord", "Can't find data record in database table course."
            )
        now = time.time()
        listed = []
        for (course, userid), state in self.enrolments.items():
            outside = state["timestart"] > now or 0 < state["timeend"] < now
            if course != courseid or (onlyactive and (state["suspended"] or outside)):
                continue
            user = self.users[userid]
            listed.append(
                {
                    "id": userid,
                    "username": user["username"],
                    "fullname": f"{user['firstname']} {user['lastname']}",
                    "email": user["email"],
                    **({"idnumber": user["idnumber"]} if user["idnumber"] else {}),
                    "roles": [
                        {"roleid": r, "name": "", "shortname": ROLES[r], "sortorder": 0} for r in sorted(state["roles"])
                    ],
                }
            )
        return listed

    def _enrol_check(self, enrolment: dict[str, Any]) -> None:
        if enrolment["courseid"] not in self.courses or enrolment["courseid"] == 1:
            raise invalid("Context does not exist")
        if enrolment["userid"] not in self.users:
            raise invalid(f"User id not exist: {enrolment['userid']}")

    def enrol_manual_enrol_users(self, params: dict[str, Any]) -> Any:
        enrolments = many(params, "enrolments", ENROL_FIELDS, ("roleid", "userid", "courseid"))
        for enrolment in enrolments:
            self._enrol_check(enrolment)
            if enrolment["roleid"] not in ASSIGNABLE:
                raise WsException(
                    "moodle_exception",
                    "wsusercannotassign",
                    f"You don't have the permission to assign this role ({enrolment['roleid']}) to this "
                    f"user ({enrolment['userid']}) in this course({enrolment['courseid']}).",
                )
        for enrolment in enrolments:  # omitted dates and suspend reset to 0 / active, as in Moodle
            key = (enrolment["courseid"], enrolment["userid"])
            roles = self.enrolments.get(key, {}).get("roles", set()) | {enrolment["roleid"]}
            self.enrolments[key] = {
                "roles": roles,
                "timestart": enrolment.get("timestart", 0),
                "timeend": enrolment.get("timeend", 0),
                "suspended": bool(enrolment.get("suspend", 0)),
            }
        return None

    def enrol_manual_unenrol_users(self, params: dict[str, Any]) -> Any:
        enrolments = many(params, "enrolments", {"userid": "i", "courseid": "i", "roleid": "i"}, ("userid", "courseid"))
        for enrolment in enrolments:
            self._enrol_check(enrolment)
        for enrolment in enrolments:
            self.enrolments.pop((enrolment["courseid"], enrolment["userid"]), None)
        return None


def handler_for(fake: MoodleFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            query = self.path.partition("?")[2]
            if fake.latency:
                time.sleep(fake.latency)
            if not self.path.startswith("/webservice/rest/server.php"):
                self.send("404 Not Found", 404, "text/html")
                return
            fault, value, _ = fake.answer(query, body)
            if fault is not None and fault.kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            if fault is not None and fault.kind == "status":
                self.send(f"<html><body>{fault.status} from the fake</body></html>", fault.status, "text/html")
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            self.send(json.dumps(value), 200, "application/json")

        do_GET = do_POST

        def send(self, text: str, status: int, content_type: str) -> None:
            data = text.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (a timeout test)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def running(port: int = 0, **options: Any) -> Iterator[MoodleFake]:
    """A fake Moodle serving on 127.0.0.1 in a thread, for the length of the block."""
    fake = MoodleFake(**options)
    server = Server(("127.0.0.1", port), handler_for(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    with serving(server, "moodle-fake"):
        yield fake


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.moodle_fake", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="fake-token-0123456789abcdef")
    parser.add_argument("--max-input-vars", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call, e.g. 0.045")
    args = parser.parse_args()
    with running(args.port, token=args.token, max_input_vars=args.max_input_vars, latency=args.latency) as fake:
        print(f"Moodle fake at {fake.url} (token in --token); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
