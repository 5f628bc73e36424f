"""The bank's message bus through FastStream: one class, three kinds of bus, no protocol code of our own.

``Bus`` consumes InvestSuite's event topic with manual acknowledgement (the listener acknowledges only
after the journal commit), publishes to it (the sandbox, tests and benchmarks do), and dead-letters
poison with the reason in the ``x-dead-letter-reason`` header.

FastStream never decodes a body here: the subscription's decoder hands the raw bytes over untouched,
whatever content type the message says (a framework decoder failing on ``application/json`` before the
handler ran left such messages unacknowledged for ever: issue 24). The listener decodes them itself
(``batch.adapters.bus_models.parse_message``). Each ``Delivery`` carries the broker's message id (AMQP
``message-id``, NATS ``Nats-Msg-Id``; MQTT has none) and the event name where the bus carries it (the
AMQP routing key, the MQTT topic, the NATS subject).

Kafka is not offered: no Kafka-protocol broker can be run beside the tests here, and no transport is
offered untested (issue 24).

========  ============================================================================================
RabbitMQ  a durable queue ``queue`` bound (``#``) to the durable topic exchange ``exchange``; prefetch =
          ``prefetch``; poison -> the durable queue ``dead_letter``; persistent messages, publisher confirms
MQTT      ``topic`` with QoS 1, MQTT 5, a persistent session ``client_id`` (unacknowledged messages are
          redelivered after a reconnect); ``concurrency`` messages in flight on the client; poison ->
          the topic ``dead_letter`` (QoS 1; MQTT keeps no queue: the journal's inbox keeps every poison
          message too). No Receive Maximum is sent: Mosquitto 2.0.11 exceeds it and the client drops
          the connection (see docs/design.md §6)
NATS      JetStream stream ``stream`` over ``topic`` and ``dead_letter``, durable consumer ``client_id``
========  ============================================================================================
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import zmqtt
from faststream import AckPolicy, Context
from faststream._internal.broker import BrokerUsecase
from faststream.message import StreamMessage
from faststream.security import BaseSecurity, SASLPlaintext

from batch.settings import BusKind, BusSettings

DEAD_LETTER_REASON = "x-dead-letter-reason"
log = logging.getLogger("batch.bus")


@dataclass(frozen=True)
class Delivery:
    """One message handed over by the bus; ``ack`` once the journal has committed what it meant."""

    body: bytes
    ack: Callable[[], Awaitable[None]]
    #: the broker's own id of the message, None where the bus gives none (MQTT, a publisher that set none)
    message_id: str | None = None
    #: the event name where the bus carries it: AMQP routing key, MQTT topic, NATS subject
    routing_key: str | None = None


async def raw_body(message: StreamMessage[Any]) -> Any:
    """The subscription's decoder: the body as the bus delivered it (the listener decodes it, nothing else)."""
    return message.body


def _origin(kind: BusKind, message: StreamMessage[Any]) -> tuple[str | None, str | None]:
    """(message id, routing key or topic) of a raw message, as far as the bus carries them."""
    raw: Any = message.raw_message
    if kind == "rabbitmq":
        return getattr(raw, "message_id", None) or None, getattr(raw, "routing_key", None) or None
    if kind == "mqtt":
        return None, getattr(raw, "topic", None) or None
    headers = getattr(raw, "headers", None) or {}
    return headers.get("Nats-Msg-Id") or None, getattr(raw, "subject", None) or None


OnMessage = Callable[[Delivery], Awaitable[None]]


def ssl_context(settings: BusSettings) -> ssl.SSLContext | None:
    if not (settings.tls or settings.tls_ca_file or settings.tls_cert_file):
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file is not None:
        context.load_cert_chain(
            str(settings.tls_cert_file), str(settings.tls_key_file) if settings.tls_key_file else None
        )
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def security(settings: BusSettings) -> BaseSecurity | None:
    context = ssl_context(settings)
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else ""
        return SASLPlaintext(username=settings.username, password=password, ssl_context=context)
    return BaseSecurity(ssl_context=context) if context is not None else None


class Bus:
    """A FastStream broker for one kind of bus, with the listener's subscription and the dead-letter target."""

    def __init__(
        self, settings: BusSettings, kind: BusKind | None = None, *, client_id: str | None = None, consumer: bool = True
    ) -> None:
        self.settings = settings
        self.kind: BusKind = kind or settings.kind
        self.client_id = client_id or settings.client_id
        #: a publisher only (the sandbox) keeps no MQTT session on the broker
        self.consumer = consumer
        self.broker: BrokerUsecase[Any, Any] = self._broker()

    # -- construction ---------------------------------------------------------------------------------
    def _broker(self) -> BrokerUsecase[Any, Any]:
        s = self.settings
        common: dict[str, Any] = {"security": security(s), "logger": log, "log_level": logging.DEBUG}
        url = s.url(self.kind)
        if self.kind == "rabbitmq":
            from faststream.rabbit import RabbitBroker  # noqa: PLC0415

            return RabbitBroker(url, **common)
        if self.kind == "mqtt":
            from faststream.mqtt import MQTTBroker  # noqa: PLC0415

            return MQTTBroker(
                url,
                client_id=self.client_id,
                clean_session=not self.consumer,
                session_expiry_interval=s.mqtt_session_expiry_seconds if self.consumer else 0,
                version="5.0",
                **common,
            )
        from faststream.nats import NatsBroker  # noqa: PLC0415

        return NatsBroker(url, **common)

    def consume(self, on_message: OnMessage) -> None:
        """Subscribe ``on_message`` to the event topic (before ``start``), acknowledging manually."""
        s = self.settings

        kind = self.kind

        async def handler(message: Annotated[StreamMessage[Any], Context("message")]) -> None:
            message_id, routing_key = _origin(kind, message)
            await on_message(Delivery(bytes(message.body), message.ack, message_id, routing_key))

        manual = AckPolicy.MANUAL
        if self.kind == "rabbitmq":
            from faststream.rabbit import Channel, RabbitBroker  # noqa: PLC0415

            assert isinstance(self.broker, RabbitBroker)
            self.broker.subscriber(
                self._rabbit_queue(),
                self._rabbit_exchange(),
                channel=Channel(prefetch_count=s.prefetch),
                ack_policy=manual,
                decoder=raw_body,
            )(handler)
        elif self.kind == "mqtt":
            from faststream.mqtt import MQTTBroker  # noqa: PLC0415

            assert isinstance(self.broker, MQTTBroker)
            self.broker.subscriber(
                s.topic,
                qos=zmqtt.QoS.AT_LEAST_ONCE,
                ack_policy=manual,
                max_workers=s.concurrency,
                decoder=raw_body,
            )(handler)
        else:
            from faststream.nats import NatsBroker, PullSub  # noqa: PLC0415

            assert isinstance(self.broker, NatsBroker)
            self.broker.subscriber(
                s.topic,
                stream=self._nats_stream(),
                durable=self.client_id,
                ack_policy=manual,
                pull_sub=PullSub(batch_size=s.prefetch),
                decoder=raw_body,
            )(handler)

    def _rabbit_exchange(self) -> Any:
        from faststream.rabbit import ExchangeType, RabbitExchange  # noqa: PLC0415

        return RabbitExchange(self.settings.exchange, type=ExchangeType.TOPIC, durable=True)

    def _rabbit_queue(self) -> Any:
        from faststream.rabbit import RabbitQueue  # noqa: PLC0415

        return RabbitQueue(self.settings.queue, durable=True, routing_key="#")

    def _nats_stream(self) -> Any:
        from faststream.nats import JStream  # noqa: PLC0415

        return JStream(self.settings.stream, subjects=[self.settings.topic, self.settings.dead_letter])

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.broker.start()
        if self.kind == "rabbitmq":
            from faststream.rabbit import RabbitBroker, RabbitQueue  # noqa: PLC0415

            assert isinstance(self.broker, RabbitBroker)
            exchange = await self.broker.declare_exchange(self._rabbit_exchange())
            await self.broker.declare_queue(RabbitQueue(self.settings.dead_letter, durable=True))
            # the listener's queue and its binding exist before anything is published (declaring is idempotent):
            # an event published to an exchange with no queue bound would be dropped
            queue = await self.broker.declare_queue(self._rabbit_queue())
            await queue.bind(exchange, routing_key="#")

    async def stop(self) -> None:
        """Close the connection: whatever was delivered and not acknowledged goes back to the bus."""
        await self.broker.stop()

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            return bool(await self.broker.ping(timeout))
        except Exception:  # a broken connection is "not ready", never a crash of the probe
            return False

    # -- publishing ----------------------------------------------------------------------------------------
    async def publish(self, body: bytes, *, routing_key: str = "", content_type: str | None = None) -> None:
        """Publish one event to the event topic, durably (persistent / QoS 1 / confirmed).

        ``content_type``: the AMQP content-type property (RabbitMQ only; the tests label poison with it).
        """
        await self._send(
            body, self.settings.topic, routing_key or "event", {}, to_queue=False, content_type=content_type
        )

    async def dead_letter(self, body: bytes, reason: str) -> None:
        """Send a poison message to the dead-letter queue/topic with the reason in a header."""
        await self._send(body, self.settings.dead_letter, "", {DEAD_LETTER_REASON: reason[:500]}, to_queue=True)

    async def _send(
        self,
        body: bytes,
        topic: str,
        routing_key: str,
        headers: dict[str, str],
        *,
        to_queue: bool,
        content_type: str | None = None,
    ) -> None:
        broker: Any = self.broker
        if self.kind == "rabbitmq":
            if to_queue:
                await broker.publish(body, queue=self.settings.dead_letter, headers=headers, persist=True)
            else:
                await broker.publish(
                    body,
                    exchange=self._rabbit_exchange(),
                    routing_key=routing_key,
                    headers=headers,
                    persist=True,
                    content_type=content_type,
                )
        elif self.kind == "mqtt":
            await broker.publish(body, topic, qos=zmqtt.QoS.AT_LEAST_ONCE, headers=headers)
        else:
            await broker.publish(body, topic, headers=headers, stream=self.settings.stream)
