"""Message transport: the ``Broker`` protocol, ``StompBroker`` (ActiveMQ) and ``InMemoryBroker``."""
