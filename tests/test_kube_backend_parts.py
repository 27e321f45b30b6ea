"""The parts of the kubernetes backend that need no cluster: names and options."""

from __future__ import annotations

import re

import pytest

from corra._errors import ConfigError
from corra.backends.kubernetes._naming import (
    ATTEMPT_LABEL,
    INSTANCE_LABEL,
    PROCESS_LABEL,
    adoptable,
    job_labels,
    job_name,
    label_value,
)
from corra.backends.kubernetes._options import KubernetesOptions
from corra.processes._backend import EffectKey

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    "process_id",
    ["p1abcdef01234", "P1ABC", "p_1_2", "-p-", "x" * 64, "A" * 64, "a_" * 32, "z"],
)
def test_a_job_name_is_a_dns_label_and_the_same_for_the_same_key(process_id):
    for attempt in (1, 12, 999_999_999):
        key = EffectKey(process_id, attempt)
        name = job_name(key)
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        assert job_name(EffectKey(process_id, attempt)) == name


def test_two_keys_never_share_a_job_name():
    keys = [
        EffectKey(process_id, attempt)
        for process_id in ("pA", "pa", "p_a", "p-a", "x" * 64, "x" * 63 + "y", "X" * 64)
        for attempt in (1, 2, 11)
    ]
    names = [job_name(key) for key in keys]
    assert len(set(names)) == len(keys)
    assert job_name(EffectKey("p1abc", 2)) == "corra-p1abc-2"  # (readable where it can be)


def test_labels_are_label_values_and_adoption_checks_them():
    key = EffectKey("P_" * 32, 3)
    labels = job_labels("a" * 70, key)
    assert all(LABEL_VALUE.match(value) and len(value) <= 63 for value in labels.values())
    assert labels[ATTEMPT_LABEL] == "3"
    assert label_value("p1abc") == "p1abc"
    assert adoptable({**labels, "other": "x"}, "a" * 70, key)
    assert not adoptable({**labels, ATTEMPT_LABEL: "4"}, "a" * 70, key)
    assert not adoptable({**labels, INSTANCE_LABEL: "elsewhere"}, "a" * 70, key)
    assert not adoptable({PROCESS_LABEL: labels[PROCESS_LABEL]}, "a" * 70, key)
    assert not adoptable(None, "a" * 70, key)


def test_options_take_what_a_pod_needs():
    options = KubernetesOptions(
        image="python:3.12-slim",
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        node_selector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="runner",
        pod_template={"spec": {"priorityClassName": "low"}},
    )
    assert options.resources["limits"] == {"memory": "2Gi"}
    assert options.tolerations == ({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"image": ""}, "kubernetes.image: got ''"),
        ({"image": "a b"}, "kubernetes.image: got 'a b'"),
        ({"resources": {"limits": {"memory": "lots"}}}, "kubernetes.resources.limits.memory"),
        ({"resources": {"wants": {}}}, "kubernetes.resources.wants: unknown"),
        ({"resources": {"limits": {"cpu": 2}}}, "kubernetes.resources.limits.cpu: got 2"),
        ({"node_selector": {"disk": 1}}, "kubernetes.node_selector.disk: got 1"),
        ({"tolerations": [{"operator": "Maybe"}]}, "kubernetes.tolerations[0].operator"),
        ({"tolerations": [{"effect": "Now"}]}, "kubernetes.tolerations[0].effect"),
        ({"tolerations": [{"keys": "x"}]}, "kubernetes.tolerations[0]: unknown field"),
        ({"tolerations": [{"tolerationSeconds": -1}]}, "tolerationSeconds: got -1"),
        ({"tolerations": "all"}, "kubernetes.tolerations: got 'all'"),
        ({"service_account": "Runner"}, "kubernetes.service_account: got 'Runner'"),
        ({"pod_template": []}, "kubernetes.pod_template: got []"),
        ({"suspend_on_pause": "yes"}, "kubernetes.suspend_on_pause: got 'yes'"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field_path(fields, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        KubernetesOptions(**{"image": "busybox", **fields})
