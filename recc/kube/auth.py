"""Who the caller is, for EKS: a bearer token from the AWS identity, and the Kubernetes user.

:func:`eks_token` makes the token ``aws eks get-token`` makes, without the AWS CLI: a presigned
STS ``GetCallerIdentity`` URL bound to the cluster by the ``x-k8s-aws-id`` header. EKS replays
the URL to learn the caller's IAM identity. :func:`kubernetes_user` turns that identity's ARN
into the name RECC binds the owner's Role to, and records as the cluster's owner.

Example
-------
>>> kubernetes_user("arn:aws:sts::111122223333:assumed-role/Researcher/alice@example.org")
'alice-example.org'
>>> kubernetes_user("arn:aws:iam::111122223333:user/bob", {"bob": "robert"})
'robert'
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from botocore.signers import RequestSigner

# EKS accepts a token for 15 minutes; the URL itself is signed for 60 s as the CLI does.
TOKEN_EXPIRY_SECONDS = 60
_TOKEN_PREFIX = "k8s-aws-v1."
_CLUSTER_HEADER = "x-k8s-aws-id"
_USER_BAD = re.compile(r"[^a-z0-9.-]+")


def eks_token(cluster_name: str, session: Any) -> str:
    """A bearer token for the Kubernetes API of EKS cluster ``cluster_name``.

    ``session`` is a :class:`boto3.session.Session` (its credentials and region sign the URL).
    Nothing is sent anywhere: signing is local.

    Example
    -------
    >>> import boto3
    >>> s = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
    ...                   region_name="eu-west-1")
    >>> eks_token("research", s).startswith("k8s-aws-v1.")
    True
    """
    region = session.region_name or "us-east-1"
    sts = session.client("sts", region_name=region)
    signer = RequestSigner(
        sts.meta.service_model.service_id,
        region,
        "sts",
        "v4",
        session.get_credentials(),
        session.events,
    )
    url = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"{sts.meta.endpoint_url}/?Action=GetCallerIdentity&Version=2011-06-15",
            "body": {},
            "headers": {_CLUSTER_HEADER: cluster_name},
            "context": {},
        },
        region_name=region,
        expires_in=TOKEN_EXPIRY_SECONDS,
        operation_name="",
    )
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def principal_name(arn: str) -> str:
    """The person-like part of an IAM ARN: the session name of an assumed role, the user name
    of an IAM user, else the last path element.

    >>> principal_name("arn:aws:sts::1:assumed-role/AWSReservedSSO_Research_0a1b/alice")
    'alice'
    >>> principal_name("arn:aws:iam::1:role/ci/harvester")
    'harvester'
    """
    resource = arn.split(":", 5)[-1]
    return resource.rsplit("/", 1)[-1]


def kubernetes_user(arn: str, user_map: Mapping[str, str] | None = None) -> str:
    """The Kubernetes user name RECC binds the owner's Role to, for caller ``arn``.

    ``user_map`` (``recc.eks.user-map``) maps a full ARN or a principal name to a user name,
    for platforms whose access entries use other names; otherwise the principal name is
    lower-cased and reduced to ``[a-z0-9.-]``.
    """
    user_map = user_map or {}
    name = principal_name(arn)
    for key in (arn, name):
        if key in user_map:
            return str(user_map[key])
    return _USER_BAD.sub("-", name.lower()).strip("-.") or "unknown"


def eks_username(arn: str, user_map: Mapping[str, str] | None = None) -> str:
    """The Kubernetes user name EKS gives caller ``arn`` by an access entry with no custom
    user name: an IAM user's ARN, or ``arn:aws:sts::A:assumed-role/R/{{SessionName}}`` (with
    ``@`` in the session name turned into ``-``). ``user_map`` (``recc.eks.user-map``) names
    callers whose access entry sets one.

    >>> eks_username("arn:aws:iam::111122223333:user/bob")
    'arn:aws:iam::111122223333:user/bob'
    >>> eks_username("arn:aws:sts::111122223333:assumed-role/Researcher/alice@example.org")
    'arn:aws:sts::111122223333:assumed-role/Researcher/alice-example.org'
    >>> eks_username("arn:aws:iam::1:user/bob", {"bob": "robert"})
    'robert'
    """
    for key in (arn, principal_name(arn)):
        if key in (user_map or {}):
            return str((user_map or {})[key])
    prefix, _, resource = arn.rpartition(":")
    if resource.startswith("assumed-role/"):
        role, _, session = resource[len("assumed-role/") :].partition("/")
        return f"{prefix}:assumed-role/{role}/{session.replace('@', '-')}"
    return arn
