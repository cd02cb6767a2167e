# Cython's augmenting declarations for stream.py (see http1.pxd).
cimport cython

cdef class Stream:
    cdef public object transport
    cdef public bint closed
    cdef public object lost
    cdef public bint write_paused
    cdef public bint read_paused
    cdef public object _drained
    cdef public bytes _pending
    cdef public object _raw
    cdef public bint _raw_eof
    cdef public object _raw_waiter

    cpdef pause(self)
    cpdef resume(self)
    cpdef write(self, bytes data)
    cpdef send_soon(self, bytes data)
    cpdef flush(self)
    cpdef close(self)


@cython.locals(streams=list, stream=Stream)
cpdef _send_held()
