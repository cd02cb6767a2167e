# Cython's augmenting declarations for upstream.py (see http1.pxd).
cimport cython
from kiln.local.backend cimport Backend
from kiln.local.stream cimport Stream
from kiln.local.proxy cimport Client
from kiln.local.http1 cimport Fields, Request, Response, length_line, make_response, response_head
from kiln.local.messages cimport version


cdef class Upstream(Stream):
    cdef public Py_ssize_t _chunk_at
    cdef public Fields _fields
    cdef public Py_ssize_t _head_bytes
    cdef public int _heads
    cdef public bint _in_chunk
    cdef public bint _in_trailers
    cdef public bytes _last
    cdef public bytes _lead
    cdef public bytes _began
    cdef public bytes _reason
    cdef public Py_ssize_t _trailer_bytes
    cdef public bint _trailing
    cdef public bint answered
    cdef public Backend backend
    cdef public object balancer
    cdef public bint chunked
    cdef public Client client
    cdef public bint complete
    cdef public bint eof_body
    cdef public bint final
    cdef public Request head
    cdef public bint keep_client
    cdef public bint mid
    cdef public list out
    cdef public object parser
    cdef public bint received
    cdef public bytes request
    cdef public Response resp
    cdef public bint reusable
    cdef public bint spent
    cdef public double started
    cdef public bint stray
    cdef public bint switched
    cdef public object waiter

    cpdef begin(self, balancer, Client client, Request head, double started, waiter=*)
    cpdef send(self, bytes request, double deadline)
    cpdef bint usable(self)
    cpdef end_stream(self)
    @cython.locals(backend=Backend, idle=list, elapsed=double)
    cpdef _end(self, error)
