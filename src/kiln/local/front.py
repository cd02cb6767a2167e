"""A listen address shared by several fleets: each request goes to the fleet its Host names.

The front accepts the connections and parses the requests (it is a
``Balancer`` without backends of its own); the fleet's ``Balancer`` answers
each request, with its own instances, counters and retries. Routing is per
request, not per connection: a client (or a proxy in front) may send
requests for several hosts on one kept-alive connection.
"""

from __future__ import annotations

from kiln.local.challenges import Challenges
from kiln.local.http1 import Request, simple_response
from kiln.local.lb import Balancer
from kiln.local.proxy import Client, ClientFailed, linger, read_body
from kiln.local.routes import Routes, host_name
from kiln.local.tls import CertFiles, Sni


class Front(Balancer):
    """The listener on one address, and the Host table of the fleets behind it."""

    def __init__(self, fleets: str) -> None:
        super().__init__(fleets)  # named for its errors: "cannot serve fleet web: ..."
        self.routes: Routes[Balancer] = Routes()
        self.unrouted = 0  # requests for a Host no fleet here claims: 404
        self.sni: Sni | None = None  # when it terminates TLS: the certificate for each name
        self.certs: dict[str, tuple[list[str], CertFiles]] = {}  # fleet -> (hosts, files)
        self.acme: Challenges | None = None  # a plain listener where a CA checks ACME tokens

    def _fast(self, head: Request, client: Client) -> bool:
        if self.acme is not None and self.acme.claims(head):
            return False  # answered in _serve
        routes = self.routes
        target = routes.default if routes.single else routes.pick(head.host)
        return target is not None and target._fast(head, client)

    async def _serve(self, head: Request, client: Client) -> bool:
        if self.acme is not None:
            answer = self.acme.answer(head)
            if answer is not None:
                client.write(answer)
                if head.has_body or head.close or head.upgrade is not None:
                    if head.has_body:  # never read here
                        await linger(client, client)
                    return False
                try:
                    await read_body(client, head, 0)  # the end of the request
                except ClientFailed:
                    return False
                return True
        target = self.routes.pick(head.host)
        if target is not None:
            return await target._serve(head, client)
        self.unrouted += 1
        where = "" if self.listen is None else f" on {self.listen[0]}:{self.listen[1]}"
        body = f"no fleet serves host {host_name(head.host) or '(none)'}{where}\n"
        client.write(simple_response(404, body, close=True))
        if head.has_body:  # unread, it would make the close a reset that loses the 404
            await linger(client, client)
        return False

    def listening_fds(self) -> list[int]:
        """The listening sockets' descriptors, to hand to a successor."""
        return [s.fileno() for s in self._server.sockets] if self._server else []

    def stop_accepting(self) -> None:
        """Close the listener here only; open connections carry on (a successor has it)."""
        if self._server is not None:
            self._server.close()

    def retire(self) -> None:
        """Stop accepting, and send every open connection to the successor.

        A request under way whose answer has not started, and every request after
        it, is answered with ``Connection: close``; a connection idle for
        RETIRING_IDLE is closed (kiln.local.proxy). The clients come back on new
        connections, to the successor. Kept open instead, they went on reaching
        this balancer, which no longer learns of membership: once a deploy had
        replaced the instances, every request on them was a 502 (a new user's wrk
        run after a kiln upgrade).
        """
        self.stop_accepting()
        self.retiring = True
        for client in self.clients:
            exchange = client.exchange
            if exchange is not None and not exchange.answered and exchange.head is not None:
                exchange.head.close = True
