"""The SOAP partner ``login`` call of the mock Salesforce (``POST /services/Soap/u/{version}``).

What simple-salesforce and other clients use for a username + password + security token
login: the request is the partner ``login`` envelope (the password with the security token
appended), the answer a ``loginResponse`` with ``sessionId`` and ``serverUrl`` or, for bad
credentials, the documented ``INVALID_LOGIN`` fault (HTTP 500).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

Response = tuple[int, dict[str, str], bytes]
ORG_ID = "00D000000000001AAA"
USER_ID = "005000000000001AAA"
_XML = {"Content-Type": "text/xml;charset=UTF-8"}
_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


def parse_login(body: bytes) -> tuple[str, str]:
    """(username, password) of a partner ``login`` envelope; ValueError names what is wrong."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"The request is not well-formed XML: {exc}") from exc
    if root.tag != f"{{{_ENV}}}Envelope":
        raise ValueError("The request is not a SOAP envelope.")
    login = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "login"), None)
    if login is None:
        raise ValueError("The SOAP body has no login element.")
    values = {e.tag.rsplit("}", 1)[-1]: (e.text or "") for e in login}
    if "username" not in values or "password" not in values:
        raise ValueError("The login element needs username and password.")
    return values["username"], values["password"]


def login_response(base_url: str, version: str, session_id: str, username: str) -> Response:
    server = f"{base_url}/services/Soap/u/{version}/{ORG_ID}"
    meta = f"{base_url}/services/Soap/m/{version}/{ORG_ID}"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{_ENV}" xmlns="urn:partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><loginResponse><result>"
        f"<metadataServerUrl>{escape(meta)}</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
        f"<serverUrl>{escape(server)}</serverUrl>"
        f"<sessionId>{escape(session_id)}</sessionId><userId>{USER_ID}</userId>"
        f"<userInfo><organizationId>{ORG_ID}</organizationId><userId>{USER_ID}</userId>"
        f"<userName>{escape(username)}</userName></userInfo>"
        "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )
    return 200, dict(_XML), xml.encode()


def fault(code: str, message: str, client: bool = False) -> Response:
    """A SOAP fault: ``sf:<code>`` with a LoginFault detail, or ``soapenv:Client``."""
    faultcode = "soapenv:Client" if client else f"sf:{code}"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{_ENV}" xmlns:sf="urn:fault.partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><soapenv:Fault><faultcode>{faultcode}</faultcode>"
        f"<faultstring>{escape(code)}: {escape(message)}</faultstring>"
        '<detail><sf:LoginFault xsi:type="sf:LoginFault">'
        f"<sf:exceptionCode>{escape(code)}</sf:exceptionCode>"
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return 500, dict(_XML), xml.encode()


def invalid_login() -> Response:
    return fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
