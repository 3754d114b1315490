"""JSON Schemas for the two custom resources in ``deploy/k8s``, which kubernetes-validate has none for.

Written here from the CRDs' documented fields (Prometheus Operator ``monitoring.coreos.com/v1``
ServiceMonitor, KEDA ``keda.sh/v1alpha1`` ScaledObject), for the parts the manifests use: every level
the manifests touch lists its known fields with ``additionalProperties: false``, so a misspelt or
misplaced field fails as it would against the cluster's CRD. Fields the manifests do not use are
named (so adding one is not an error) but only loosely typed.
"""

from __future__ import annotations

from typing import Any

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array", "items": {"type": "object"}}},
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS,
                   "annotations": LABELS},
}
ANY = {}


def _loose(*names: str) -> dict[str, Any]:
    return dict.fromkeys(names, ANY)


SERVICE_MONITOR_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        **_loose("authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
                 "filterRunning", "followRedirects", "metricRelabelings", "noProxy", "oauth2", "params",
                 "proxyConnectHeader", "proxyFromEnvironment", "proxyUrl", "relabelings", "tlsConfig",
                 "trackTimestampsStaleness"),
    },
}

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": SERVICE_MONITOR_ENDPOINT},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                **_loose("attachMetadata", "bodySizeLimit", "fallbackScrapeProtocol", "keepDroppedTargets",
                         "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "nativeHistogramBucketLimit",
                         "nativeHistogramMinBucketFactor", "scrapeClass", "scrapeClassicHistograms",
                         "scrapeProtocols", "selectorMechanism", "targetLimit", "convertClassicHistogramsToNHCB"),
            },
        },
    },
}

KEDA_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "authenticationRef": {"type": "object", "required": ["name"]},
    },
}

SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "apiVersion": {"type": "string"},
                                   "kind": {"type": "string"}, "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            # behavior is the HPA's own type: the test validates it inside an autoscaling/v2 HPA
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"]},
                "triggers": {"type": "array", "minItems": 1, "items": KEDA_TRIGGER},
            },
        },
    },
}

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
}
