"""Turn connection failures into one sentence that says what to change.

aiomqtt flattens socket and TLS errors into `MqttError(str(exc))`, so these are told
apart by the OpenSSL / errno text; anything not recognised is still reported with
the broker address and the original message.
"""

from __future__ import annotations

from aiomqtt import MqttCodeError, MqttError
from paho.mqtt.reasoncodes import ReasonCode

from kwsd.mqtt.options import MqttOptions

_BAD_LOGIN = {4, 134, 140}  # 3.1.1 "bad username or password", 5.0 ditto, bad auth method
_NOT_AUTHORISED = {5, 135}  # 3.1.1 / 5.0 "not authorised"


def _code(exc: BaseException) -> int | None:
    if not isinstance(exc, MqttCodeError):
        return None
    rc = exc.rc
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    return rc if isinstance(rc, int) else None


def explain_connect_error(exc: BaseException, options: MqttOptions) -> str:
    """Why connecting to the broker failed, and the setting to look at."""
    where = f"MQTT broker {options.address}"
    user = f"user {options.username!r}" if options.username else "no username"
    code = _code(exc)
    text = str(exc)
    if code in _BAD_LOGIN or (code in _NOT_AUTHORISED and options.username):
        # mosquitto answers "not authorised" to a wrong password, so both mean the same here.
        return (
            f"{where} refused the login for {user} (bad username or password): "
            "check mqtt.username / mqtt.password_file"
        )
    if code in _NOT_AUTHORISED:
        return (
            f"{where} refused the connection for {user} (not authorised): this broker does "
            "not allow anonymous clients; set mqtt.username and mqtt.password_file"
        )
    if code is not None and isinstance(exc, MqttCodeError):
        detail = f"code {code}: {exc.rc}"
        if code in (1, 132):
            return (
                f"{where} does not speak MQTT {options.protocol} ({detail}): "
                'set mqtt.protocol = "3.1.1" for older brokers'
            )
        if code in (2, 133):
            return (
                f"{where} rejected client id {options.client_id!r} ({detail}): "
                "set another mqtt.client_id"
            )
        return f"{where} refused the connection ({detail})"
    return _explain_socket_error(text, where, options)


def _explain_socket_error(text: str, where: str, options: MqttOptions) -> str:
    lowered = text.lower()
    tls = options.tls
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        if "mismatch" in lowered or "hostname" in lowered:
            return (
                f"TLS: the certificate of {where} is not issued for host {options.host!r} "
                f"({text}): set mqtt.host to a name the certificate lists (or, for a test "
                "broker only, mqtt.tls.insecure = true to skip certificate checks)"
            )
        ca = str(tls.ca_certs) if tls.ca_certs else "the system CA store"
        return (
            f"TLS: the certificate of {where} could not be verified with {ca} ({text}): "
            "set mqtt.tls.ca_certs to the CA that signed the broker's certificate"
        )
    if (tls.enabled and "connection reset" in lowered) or any(
        marker in lowered
        for marker in (
            "wrong_version_number",
            "wrong version number",
            "unexpected eof",
            "eof occurred",
        )
    ):
        return (
            f"TLS handshake with {where} failed ({text}): this port does not seem to speak "
            "TLS; use the broker's TLS port (often 8883) or set mqtt.tls.enabled = false"
        )
    if "alert" in lowered and ("certificate" in lowered or "handshake" in lowered):
        if tls.certfile is None:
            return (
                f"TLS: {where} requires a client certificate ({text}): set "
                "mqtt.tls.certfile and mqtt.tls.keyfile"
            )
        return (
            f"TLS: {where} rejected our client certificate {tls.certfile} ({text}): check "
            "mqtt.tls.certfile / mqtt.tls.keyfile and that the broker trusts their CA"
        )
    if "refused" in lowered:
        return (
            f"cannot connect to {where}: connection refused (is the broker running and "
            "listening on that port? check mqtt.host / mqtt.port)"
        )
    if (
        "name or service not known" in lowered
        or "nodename nor servname" in lowered
        or ("name resolution" in lowered)
    ):
        return f"cannot resolve MQTT broker host {options.host!r} ({text}): check mqtt.host"
    if "timed out" in lowered:
        hint = (
            "is the port a TLS listener? then set mqtt.tls.enabled = true"
            if not tls.enabled
            else "check mqtt.host / mqtt.port and any firewall"
        )
        return f"no answer from {where} ({text}): {hint}"
    if "unreachable" in lowered or "no route" in lowered:
        return f"cannot reach {where} ({text}): check the network and mqtt.host"
    return f"cannot connect to {where}: {text or type(text).__name__}"


def explain_connection_lost(exc: BaseException, options: MqttOptions) -> str:
    inner = exc.__cause__ if isinstance(exc, MqttError) and exc.__cause__ is not None else exc
    text = str(inner) or type(inner).__name__
    if "timed out" in text.lower():
        text = f"the broker did not answer within {options.timeout_seconds:g} s"
    elif _code(inner) in (7, 128):  # paho's "connection lost" / MQTT 5 "unspecified error"
        text = "the broker closed the connection"
    return f"lost the connection to MQTT broker {options.address} ({text}); reconnecting"
