"""Drive a running swr-gate with the official Huawei Cloud Python SDK (huaweicloudsdkswr).

Usage: swr_sdk_client.py ENDPOINT AK SK PROJECT_ID
Prints one JSON line per call: {"call", "status", "error_code", "request_id"}.
The SDK is used exactly as a user would, pointed at the gateway; only the replay and
stale-date cases reach under it, to resend a captured request and to move its clock.
"""

import datetime as real_datetime
import json
import sys

import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
import huaweicloudsdkcore.signer.signer as signer
from huaweicloudsdkswr.v2 import (
    CreateUserRepositoryAuthRequest,
    DeleteRepoDomainsRequest,
    ShowUserRepositoryAuthRequest,
    SwrClient,
    UpdateRepoDomainsRequest,
    UpdateRepoDomainsRequestBody,
    UpdateUserRepositoryAuthRequest,
    UserAuth,
)

ENDPOINT, AK, SK, PROJECT = sys.argv[1:5]
USER = "fb3f175c1fd146ab8cdae3272be6107b"

sent = []
_send = requests.adapters.HTTPAdapter.send


def capturing_send(self, request, *args, **kwargs):
    sent.append(request.copy())
    return _send(self, request, *args, **kwargs)


requests.adapters.HTTPAdapter.send = capturing_send


def client(secret):
    credentials = BasicCredentials(AK, secret, PROJECT)
    return SwrClient.new_builder().with_credentials(credentials).with_endpoints([ENDPOINT]).build()


def report(call, fn):
    try:
        response = fn()
        print(json.dumps({"call": call, "status": response.status_code, "error_code": None, "request_id": None}))
    except exceptions.ClientRequestException as e:
        print(json.dumps({"call": call, "status": e.status_code, "error_code": e.error_code, "request_id": e.request_id}))


good = client(SK)
report("create_user_repository_auth", lambda: good.create_user_repository_auth(
    CreateUserRepositoryAuthRequest(namespace="team-a", repository="app",
                                    body=[UserAuth(user_id=USER, user_name="user01", auth=7)])))
report("update_user_repository_auth", lambda: good.update_user_repository_auth(
    UpdateUserRepositoryAuthRequest(namespace="team-a", repository="group/app",
                                    body=[UserAuth(user_id=USER, user_name="user01", auth=3)])))
report("update_repo_domains", lambda: good.update_repo_domains(
    UpdateRepoDomainsRequest(namespace="team-a", repository="group$app", access_domain="partner",
                             body=UpdateRepoDomainsRequestBody(permit="read", deadline="forever",
                                                               description="shared by the SDK test"))))
# SWR's own show and delete on the guarded paths, forwarded unvalidated; the SDK sends a
# nested repository name as group%2Fapp.
report("show_user_repository_auth", lambda: good.show_user_repository_auth(
    ShowUserRepositoryAuthRequest(namespace="team-a", repository="group/app")))
report("delete_repo_domains", lambda: good.delete_repo_domains(
    DeleteRepoDomainsRequest(namespace="team-a", repository="group/app", access_domain="partner")))

# A schema violation comes back as a ClientRequestException with swr-gate's code.
report("invalid_auth_value", lambda: good.create_user_repository_auth(
    CreateUserRepositoryAuthRequest(namespace="team-a", repository="app",
                                    body=[UserAuth(user_id=USER, user_name="user01", auth=2)])))

report("wrong_sk", lambda: client("not-the-secret-key").create_user_repository_auth(
    CreateUserRepositoryAuthRequest(namespace="team-a", repository="app",
                                    body=[UserAuth(user_id=USER, user_name="user01", auth=1)])))


class StaleDatetime(real_datetime.datetime):
    @classmethod
    def utcnow(cls):
        return real_datetime.datetime.utcnow() - real_datetime.timedelta(minutes=20)


signer.datetime = StaleDatetime
report("stale_date", lambda: good.create_user_repository_auth(
    CreateUserRepositoryAuthRequest(namespace="team-a", repository="app",
                                    body=[UserAuth(user_id=USER, user_name="user01", auth=1)])))
signer.datetime = real_datetime.datetime

# Replay: resend, byte for byte, the first request the SDK sent (which succeeded).
replayed = requests.Session().send(sent[0])
body = replayed.json() if replayed.content else {}
print(json.dumps({"call": "replay", "status": replayed.status_code, "error_code": body.get("error_code"),
                  "request_id": replayed.headers.get("X-Request-Id")}))
