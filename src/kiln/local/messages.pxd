# Cython's augmenting declarations for messages.py (see http1.pxd).
from kiln.local.http1 cimport Fields, make_request


cdef class MessageReader:
    cdef public object events
    cdef public Fields _fields
    cdef public object _parser
    cdef public bytes _url
    cdef public bytes _lead
    cdef public bytes _began
    cdef public bint body
    cdef public Py_ssize_t _head_bytes
    cdef public bint _in_chunk
    cdef public Py_ssize_t _chunk_at
    cdef public bint _trailing
    cdef public Py_ssize_t _trailer_bytes
    cdef public object error
    cdef public bint mid
    cdef public bint spent
    cdef public Py_ssize_t _owed
    cdef public double last_read
    cdef public double head_start

    cpdef object feed(self, bytes data)


cpdef str version(object parser, Fields fields, bytes began, Py_ssize_t at)
