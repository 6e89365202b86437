"""The provider's configuration: the control plane's URL and the tenant's token, from the
stack or from VCE_ENDPOINT / VCE_TOKEN; every refusal names the field and never shows the
token."""

from __future__ import annotations

import asyncio

import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import CheckRequest, ConfigureRequest
from pulumi_resource_vce.config import ConfigError, ProviderConfig, parse_config
from pulumi_resource_vce.provider import ProviderError, VceProvider

ENDPOINT = "https://panel.example.net"
TOKEN = "vce_0123abcd_s3cr3t-Part_of-the-token"
SECRET_PART = "s3cr3t-Part"
PROVIDER_URN = "urn:pulumi:dev::shop::pulumi:providers:vce::default"


def refused(values: dict, environ: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(values, environ or {})
    return caught.value


def test_the_stacks_values_come_first_then_the_environment():
    environ = {"VCE_ENDPOINT": "http://127.0.0.1:8080/", "VCE_TOKEN": "vce_aaaa_env"}
    assert parse_config({}, environ) == ProviderConfig("http://127.0.0.1:8080", "vce_aaaa_env")
    given = parse_config({"endpoint": ENDPOINT + "/", "token": TOKEN}, environ)
    assert (given.endpoint, given.token) == (ENDPOINT, TOKEN)
    half = parse_config({"endpoint": ENDPOINT, "token": None}, environ)
    assert (half.endpoint, half.token) == (ENDPOINT, "vce_aaaa_env")


@pytest.mark.parametrize(
    ("values", "environ", "field", "reason"),
    [
        ({}, {}, "endpoint", "is required (set vce:endpoint or VCE_ENDPOINT)"),
        (
            {"endpoint": ENDPOINT},
            {},
            "token",
            "is required (set vce:token as a secret or VCE_TOKEN)",
        ),
        ({"token": TOKEN}, {"VCE_ENDPOINT": ""}, "endpoint", "is required"),
        (
            {"endpoint": "panel.example.net", "token": TOKEN},
            {},
            "endpoint",
            "must be an http(s) URL",
        ),
        ({"endpoint": "ftp://panel", "token": TOKEN}, {}, "endpoint", "must be an http(s) URL"),
        ({"endpoint": "https://u:p@panel", "token": TOKEN}, {}, "endpoint", "must be a plain URL"),
        ({"endpoint": "https://panel/?a=1", "token": TOKEN}, {}, "endpoint", "must be a plain URL"),
        ({"endpoint": 8080, "token": TOKEN}, {}, "endpoint", "must be a string, got integer 8080"),
        ({"endpoint": ENDPOINT, "token": 12}, {}, "token", "must be a string"),
        ({"endpoint": ENDPOINT, "token": "vce_a b"}, {}, "token", "must be an API token"),
        ({"endpoint": ENDPOINT, "token": "vce_a\nb"}, {}, "token", "must be an API token"),
        (
            {"endpoint": ENDPOINT, "token": TOKEN, "tenant": "acme"},
            {},
            "tenant",
            "unknown property",
        ),
        (
            {"endpoint": ENDPOINT, "token": TOKEN, "ledgerUrl": "sqlite://"},
            {},
            "ledgerUrl",
            "unknown",
        ),
    ],
)
def test_a_refusal_names_the_field_and_the_reason(values, environ, field, reason):
    error = refused(values, environ)
    assert error.field == field
    assert error.reason.startswith(reason), error.reason
    assert str(error) == f"{field}: {error.reason}"


def test_the_token_is_never_shown():
    config = parse_config({"endpoint": ENDPOINT, "token": TOKEN}, {})
    assert SECRET_PART not in repr(config) and SECRET_PART not in str(config)
    for bad in (f"{TOKEN} {SECRET_PART}", f"{TOKEN}\u00e9", f"{TOKEN}\t"):
        assert SECRET_PART not in str(refused({"endpoint": ENDPOINT, "token": bad}))


def check_config(news: dict[str, PropertyValue], environ: dict, monkeypatch):
    for name in ("VCE_ENDPOINT", "VCE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    request = CheckRequest(PROVIDER_URN, {}, news, b"")
    return asyncio.run(VceProvider().check_config(request))


def test_check_config_marks_the_token_secret_and_names_failures(monkeypatch):
    answer = check_config(
        {"endpoint": PropertyValue(ENDPOINT), "token": PropertyValue(TOKEN)}, {}, monkeypatch
    )
    assert answer.failures == []
    assert answer.inputs["token"] == PropertyValue(TOKEN, is_secret=True)
    assert not answer.inputs["endpoint"].is_secret
    from_env = check_config({}, {"VCE_ENDPOINT": ENDPOINT, "VCE_TOKEN": TOKEN}, monkeypatch)
    assert from_env.failures == [] and "token" not in from_env.inputs
    missing = check_config({"endpoint": PropertyValue(ENDPOINT)}, {}, monkeypatch)
    assert [(f.property, f.reason) for f in missing.failures] == [
        ("token", "is required (set vce:token as a secret or VCE_TOKEN)")
    ]
    bad = check_config(
        {"endpoint": PropertyValue("nowhere"), "token": PropertyValue(f"{TOKEN} x")},
        {},
        monkeypatch,
    )
    assert [f.property for f in bad.failures] == ["endpoint"]
    assert all(SECRET_PART not in f.reason for f in bad.failures)


def test_configure_refuses_with_the_field_and_accepts_the_environment(monkeypatch):
    monkeypatch.delenv("VCE_ENDPOINT", raising=False)
    monkeypatch.setenv("VCE_TOKEN", TOKEN)
    provider = VceProvider()

    async def configure(variables: dict[str, str]) -> None:
        await provider.configure(ConfigureRequest(variables, {}, True, True))

    with pytest.raises(ProviderError, match=r"^vce provider: endpoint: is required"):
        asyncio.run(configure({}))
    assert provider.client is None
    with pytest.raises(ProviderError) as caught:
        asyncio.run(configure({"vce:config:endpoint": ENDPOINT, "vce:config:token": TOKEN + " x"}))
    assert "token: must be an API token" in str(caught.value)
    assert SECRET_PART not in str(caught.value)
    asyncio.run(configure({"vce:config:endpoint": ENDPOINT}))
    assert provider.config == ProviderConfig(ENDPOINT, TOKEN)
    assert provider.client.http.headers["Authorization"] == f"Bearer {TOKEN}"
    asyncio.run(provider.client.close())


def test_an_explicit_provider_resource_configures_from_its_arguments(monkeypatch):
    for name in ("VCE_ENDPOINT", "VCE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    provider = VceProvider()
    args = {
        "endpoint": PropertyValue(ENDPOINT),
        "token": PropertyValue(TOKEN, is_secret=True),
        "version": PropertyValue("0.1.0"),
    }
    asyncio.run(provider.configure(ConfigureRequest({}, args, True, True)))
    assert provider.config == ProviderConfig(ENDPOINT, TOKEN)
    asyncio.run(provider.client.close())
