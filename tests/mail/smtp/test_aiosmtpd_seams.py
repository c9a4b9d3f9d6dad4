"""The shape of aiosmtpd that mail.smtp.server builds on: its constructor, the methods
EverlockSMTP overrides or calls, the handler hooks, and the one attribute it reads that
aiosmtpd does not document (the connection's StreamReader, for DATA and BDAT in blocks).

A new aiosmtpd release that changes any of these fails here, before it fails a client."""

import inspect
from pathlib import Path

import aiosmtpd
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mail.smtp.inbound import InboundHandler
from mail.smtp.server import EverlockSMTP
from mail.smtp.submission import SubmissionHandler

ROOT = Path(__file__).resolve().parents[3]


def _parameters(func) -> list[tuple[str, str]]:
    return [(p.name, p.kind.name) for p in inspect.signature(func).parameters.values()]


def test_the_pinned_release_is_the_one_installed():
    pins = (ROOT / "requirements.txt").read_text().splitlines()
    assert f"aiosmtpd=={aiosmtpd.__version__}" in pins


def test_the_constructor_takes_what_everlock_passes():
    assert _parameters(SMTP.__init__) == [
        ("self", "POSITIONAL_OR_KEYWORD"),
        ("handler", "POSITIONAL_OR_KEYWORD"),
        *(
            (name, "KEYWORD_ONLY")
            for name in (
                "data_size_limit",
                "enable_SMTPUTF8",
                "decode_data",
                "hostname",
                "ident",
                "tls_context",
                "require_starttls",
                "timeout",
                "auth_required",
                "auth_require_tls",
                "auth_exclude_mechanism",
                "auth_callback",
                "command_call_limit",
                "authenticator",
                "proxy_protocol_timeout",
                "loop",
            )
        ),
    ]
    # EverlockSMTP hands its own arguments on through super().__init__, nothing else.
    source = inspect.getsource(EverlockSMTP.__init__)
    assert "super().__init__(" in source
    assert "StreamReaderProtocol" not in source


def test_the_methods_everlock_overrides_or_calls_keep_their_signatures():
    expected = {
        "push": [("self", "POSITIONAL_OR_KEYWORD"), ("status", "POSITIONAL_OR_KEYWORD")],
        "challenge_auth": [
            ("self", "POSITIONAL_OR_KEYWORD"),
            ("challenge", "POSITIONAL_OR_KEYWORD"),
            ("encode_to_b64", "POSITIONAL_OR_KEYWORD"),
            ("log_client_response", "POSITIONAL_OR_KEYWORD"),
        ],
        "check_helo_needed": [("self", "POSITIONAL_OR_KEYWORD"), ("helo", "POSITIONAL_OR_KEYWORD")],
        "check_auth_needed": [("self", "POSITIONAL_OR_KEYWORD"), ("caller_method", "POSITIONAL_OR_KEYWORD")],
        "handle_exception": [("self", "POSITIONAL_OR_KEYWORD"), ("error", "POSITIONAL_OR_KEYWORD")],
        "connection_made": [("self", "POSITIONAL_OR_KEYWORD"), ("transport", "POSITIONAL_OR_KEYWORD")],
        "connection_lost": [("self", "POSITIONAL_OR_KEYWORD"), ("error", "POSITIONAL_OR_KEYWORD")],
        "data_received": [("self", "POSITIONAL_OR_KEYWORD"), ("data", "POSITIONAL_OR_KEYWORD")],
    }
    for verb in ("MAIL", "RCPT", "DATA", "AUTH", "STARTTLS", "QUIT"):
        expected[f"smtp_{verb}"] = [("self", "POSITIONAL_OR_KEYWORD"), ("arg", "POSITIONAL_OR_KEYWORD")]
    assert {name: _parameters(getattr(SMTP, name)) for name in expected} == expected
    assert _parameters(AuthResult) == [
        ("success", "KEYWORD_ONLY"),
        ("handled", "KEYWORD_ONLY"),
        ("message", "KEYWORD_ONLY"),
        ("auth_data", "KEYWORD_ONLY"),
    ]
    assert SMTP.line_length_limit == 1001  # the class attribute EverlockSMTP raises
    assert SMTP.AuthLoginUsernameChallenge and SMTP.AuthLoginPasswordChallenge


def test_the_constructor_looks_up_by_prefix_only():
    # EverlockSMTP.__dir__ and BaseHandler.__dir__ name only smtp_*, auth_* and handle_*
    # attributes: what SMTP.__init__ finds through dir() and inspect.getmembers().
    source = inspect.getsource(SMTP.__init__)
    assert source.count("inspect.getmembers(") == 1 and 'if mname.startswith("auth_")' in source
    assert source.count("dir(") == 2
    assert 'if m.startswith("handle_")' in source and 'if m.startswith("smtp_")' in source
    assert {name for name in dir(SubmissionHandler) if name.startswith("handle_")} <= set(
        SubmissionHandler.__dir__(SubmissionHandler(None, None))
    )


def test_the_handler_hooks_are_the_ones_aiosmtpd_calls():
    # aiosmtpd finds hooks by name (handle_<VERB>) and calls them as
    # hook(server, session, envelope, *arguments of the verb).
    source = inspect.getsource(SMTP)
    assert 'm.replace("handle_", "")' in source
    assert "status = await hook(self, self.session, self.envelope, *args)" in source
    for handler in (InboundHandler, SubmissionHandler):
        for name in ("handle_EHLO", "handle_RCPT", "handle_DATA", "handle_exception"):
            assert callable(getattr(handler, name, None)), (handler, name)
        hook = inspect.signature(handler.handle_DATA)
        assert list(hook.parameters) == ["self", "server", "session", "envelope"]
        assert len(inspect.signature(handler.handle_EHLO).parameters) == 6  # the 5-argument form
        # A plain MAIL or RCPT path calls the hook itself, as aiosmtpd would.
        for name in ("handle_MAIL", "handle_RCPT"):
            hook = inspect.signature(getattr(handler, name))
            assert list(hook.parameters)[:5] == ["self", "server", "session", "envelope", "address"]
            assert len(hook.parameters) == 6  # and the options
    assert "await self._call_handler_hook('MAIL', address, mail_options)" in source
    assert "await self._call_handler_hook('RCPT', address, rcpt_options)" in source


def test_the_one_undocumented_attribute_everlock_reads():
    # DATA and BDAT read the connection's bytes in blocks (mail.smtp.data): aiosmtpd keeps
    # the StreamReader it was given in _reader and offers no other way to reach it.
    assert "self._reader = reader" in inspect.getsource(SMTP._cb_client_connected)
    session = Session(loop=None)
    assert (session.ssl, session.peer, session.authenticated, session.auth_data) == (None, None, None, None)
    envelope = Envelope()
    assert (envelope.mail_from, envelope.rcpt_tos, envelope.content) == (None, [], None)
