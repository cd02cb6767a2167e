# Cython's augmenting declarations for metrics.py (see http1.pxd).
cimport cython


cdef class Histogram:
    cdef public list counts
    cdef public double sum


cdef class Counters:
    cdef public long long requests
    cdef public long long errors
    cdef public long long failures
    cdef public Histogram latency

    @cython.locals(bucket=Py_ssize_t, latency=Histogram)
    cpdef record(self, int status, double seconds)
    @cython.locals(bucket=Py_ssize_t, latency=Histogram, bounds=tuple, bound=double)
    cpdef record_with(self, Counters fleet, int status, double seconds)
