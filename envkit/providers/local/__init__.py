"""The local provider: everything envkit runs on this machine (servers, templates, spares,
loopback addresses, the server user, services, their leftovers and logs).

Nothing outside this package imports its modules; the rest of envkit reaches it through
:func:`envkit.providers.get_provider` and the :class:`envkit.providers.Provider` protocol.
"""
