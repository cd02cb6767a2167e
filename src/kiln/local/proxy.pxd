# Cython's augmenting declarations for proxy.py (see http1.pxd).
from kiln.local.stream cimport Stream
from kiln.local.messages cimport MessageReader
from kiln.local.http1 cimport Request


cdef class Client(Stream):
    cdef public object _waiter
    cdef public double body_start
    cdef public bint busy
    cdef public object exchange
    cdef public object expired
    cdef public bytes forwarded
    cdef public bint half_closed
    cdef public bytes ip
    cdef public object listener
    cdef public MessageReader messages
    cdef public int phase
    cdef public bytes scheme
    cdef public object sending
    cdef public double since
    cdef public object task
    cdef public bint trusted

    cpdef bytes forwarding(self, Request head)
    cpdef _wake(self)
    cpdef finished(self, bint keep)
    cpdef set(self, int phase)
