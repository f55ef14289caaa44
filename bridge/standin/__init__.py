"""A local stand-in for the part of GitHub the bridge uses, for tests and the offline demo.

Real HTTP on loopback that githubkit talks to unchanged, and an in-process API to act
as the humans. Modules, from pure to I/O:

``git``          git object ids and encodings (blob, tree, commit), the object store
``state``        users, repositories, issues, comments, labels, issue events, apps,
                 tokens, hooks
``payloads``     REST resources and webhook payloads as JSON
``auth``         tokens and App JWTs -> the caller
``limits``       the primary hourly limit and the content-creation limit
``faults``       injected answers for the next matching requests
``engine``       the world plus its bookkeeping; happenings -> queued deliveries
``hooks``        the background webhook sender, and deliveries made to fail
``server``       the aiohttp middleware and what the routes share
``rest_issues``  issues, comments, labels, issue events; ``rest_git`` the Git Data API;
               ``rest_apps`` apps; ``rest_repos`` a user's permission on a repository
``app``          the aiohttp application: middleware plus every route
``standin``      ``GitHubStandIn``: start, stop, and the people's hands
"""

from agora.bridge.standin.engine import RequestRecord
from agora.bridge.standin.faults import Fault
from agora.bridge.standin.hooks import signature_256
from agora.bridge.standin.standin import GitHubStandIn
from agora.bridge.standin.state import Comment, Delivery, GitHubError

__all__ = [
    "Comment",
    "Delivery",
    "Fault",
    "GitHubError",
    "GitHubStandIn",
    "RequestRecord",
    "signature_256",
]
