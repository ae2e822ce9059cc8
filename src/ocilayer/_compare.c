/*
 * ocilayer._compare: the content comparisons of a diff export, on a thread of their own.
 *
 * A diff reads both versions of every file whose size and whole-second mtime match,
 * about a third of the time of a diff of two similar trees. A Comparer does those
 * reads on a POSIX thread that never takes the GIL, while the Python walk goes on.
 *
 * - submit(first, second, size) queues the comparison of two files that lstat showed
 *   as regular files `size` bytes long.
 * - ready() returns whether the oldest queued comparison has finished.
 * - take() waits for the oldest queued comparison, with the GIL released, and
 *   returns whether the files are equal. It raises OSError naming a file that failed.
 * - close() drops what is queued and joins the thread.
 *
 * Results come back in the order of submit(). At most `capacity` comparisons are
 * queued at once; submit() raises RuntimeError beyond that, so the caller bounds its
 * own look-ahead. take() wakes up every WAIT_MS to let Python handle signals, so
 * Ctrl-C is not held up by a large file, and close() stops a comparison between two
 * chunks. After fork() the child has no thread: its Comparers raise RuntimeError.
 *
 * A comparison opens both files without following a symlink and without blocking, so
 * a FIFO swapped in since the walk reads short instead of blocking the open. It reads
 * both in chunks into two buffers of the Comparer and is true only when both read
 * the same `size` bytes and then end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define CHUNK (1 << 18)
/* How long take() waits before it checks for signals. */
#define WAIT_MS 50

/* The number of fork() calls that led to this process. A Comparer made in an earlier
   generation has no thread in this one. */
static unsigned long fork_generation;

static void
after_fork_in_child(void)
{
    fork_generation++;
}

enum { JOB_QUEUED, JOB_DONE };

typedef struct {
    char *paths; /* both paths, each ending in a NUL */
    size_t first_length;
    unsigned long long size;
    int state;
    int result; /* 1 equal, 0 different, -1 failed */
    int error;
    int failed; /* 0 or 1: which file failed */
} Job;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    int initialised;
    int started;
    /* Read by the thread between chunks without the mutex, so it is atomic. */
    int closing;
    unsigned long generation;
    /* Set while take() waits with the GIL released. */
    int taking;
    /* Set while a thread waits on `changed`, so that no signal is sent in vain. */
    int worker_waits;
    int taker_waits;
    pthread_t thread;
    Job *jobs;
    size_t capacity;
    /* Counters, taken modulo capacity: the oldest job not taken, the next job for the
       thread, and the next free slot. */
    size_t head;
    size_t next;
    size_t tail;
    char *buffers[2];
} Comparer;

/* Read up to `want` bytes, retrying on EINTR and short reads; -1 on error. */
static ssize_t
read_full(int fd, char *buffer, size_t want)
{
    size_t done = 0;
    while (done < want) {
        ssize_t got = read(fd, buffer + done, want - done);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (got == 0)
            break;
        done += (size_t)got;
    }
    return (ssize_t)done;
}

static int
compare_fds(Comparer *self, int first, int second, unsigned long long size, int *failed)
{
    unsigned long long compared = 0;
    for (;;) {
        if (__atomic_load_n(&self->closing, __ATOMIC_RELAXED)) {
            errno = ECANCELED;
            *failed = 0;
            return -1;
        }
        /* One byte past `size` shows a file that grew. */
        unsigned long long left = size + 1 - compared;
        size_t want = left < CHUNK ? (size_t)left : CHUNK;
        ssize_t a = read_full(first, self->buffers[0], want);
        if (a < 0) {
            *failed = 0;
            return -1;
        }
        ssize_t b = read_full(second, self->buffers[1], want);
        if (b < 0) {
            *failed = 1;
            return -1;
        }
        if (a != b || memcmp(self->buffers[0], self->buffers[1], (size_t)a) != 0)
            return 0;
        compared += (unsigned long long)a;
        if ((size_t)a < want)
            return compared == size;
        if (compared > size)
            return 0;
    }
}

static void
run_job(Comparer *self, Job *job)
{
    int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
    const char *first = job->paths;
    const char *second = job->paths + job->first_length + 1;
    int first_fd = open(first, flags);
    if (first_fd < 0) {
        job->result = -1;
        job->error = errno;
        job->failed = 0;
        return;
    }
    int second_fd = open(second, flags);
    if (second_fd < 0) {
        job->result = -1;
        job->error = errno;
        job->failed = 1;
    }
    else {
        job->result = compare_fds(self, first_fd, second_fd, job->size, &job->failed);
        job->error = job->result < 0 ? errno : 0;
        close(second_fd);
    }
    close(first_fd);
}

static void *
work(void *argument)
{
    Comparer *self = argument;
    pthread_mutex_lock(&self->mutex);
    for (;;) {
        while (self->next == self->tail && !self->closing) {
            self->worker_waits = 1;
            pthread_cond_wait(&self->changed, &self->mutex);
            self->worker_waits = 0;
        }
        if (self->closing)
            break;
        Job *job = &self->jobs[self->next % self->capacity];
        self->next++;
        pthread_mutex_unlock(&self->mutex);
        run_job(self, job);
        pthread_mutex_lock(&self->mutex);
        job->state = JOB_DONE;
        if (self->taker_waits)
            pthread_cond_broadcast(&self->changed);
    }
    pthread_mutex_unlock(&self->mutex);
    return NULL;
}

static void
free_jobs(Comparer *self)
{
    for (size_t index = self->head; index < self->tail; index++) {
        free(self->jobs[index % self->capacity].paths);
        self->jobs[index % self->capacity].paths = NULL;
    }
    self->head = self->next = self->tail = 0;
}

/* Stop and join the thread. The caller must have released the GIL. */
static void
stop_thread(Comparer *self)
{
    if (!self->started)
        return;
    pthread_mutex_lock(&self->mutex);
    __atomic_store_n(&self->closing, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->mutex);
    pthread_join(self->thread, NULL);
    self->started = 0;
}

static int
Comparer_init(Comparer *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"capacity", NULL};
    Py_ssize_t capacity = 1024;
    if (self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "a Comparer is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|n", keywords, &capacity))
        return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be at least 1");
        return -1;
    }
    self->jobs = calloc((size_t)capacity, sizeof(Job));
    self->buffers[0] = malloc(CHUNK);
    self->buffers[1] = malloc(CHUNK);
    if (self->jobs == NULL || self->buffers[0] == NULL || self->buffers[1] == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->capacity = (size_t)capacity;
    self->generation = fork_generation;
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->changed, NULL);
    self->initialised = 1;
    return 0;
}

static int
check_open(Comparer *self)
{
    if (!self->initialised || self->closing) {
        PyErr_SetString(PyExc_ValueError, "the Comparer is closed");
        return -1;
    }
    if (self->generation != fork_generation) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a Comparer made before fork() cannot be used in the child");
        return -1;
    }
    return 0;
}

static PyObject *
Comparer_submit(Comparer *self, PyObject *args)
{
    const char *first, *second;
    long long signed_size;
    if (!PyArg_ParseTuple(args, "yyL", &first, &second, &signed_size))
        return NULL;
    if (signed_size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    unsigned long long size = (unsigned long long)signed_size;
    if (check_open(self) < 0)
        return NULL;
    if (self->tail - self->head == self->capacity) {
        PyErr_SetString(PyExc_RuntimeError, "the Comparer's queue is full; take() first");
        return NULL;
    }
    size_t first_length = strlen(first), second_length = strlen(second);
    char *paths = malloc(first_length + second_length + 2);
    if (paths == NULL)
        return PyErr_NoMemory();
    memcpy(paths, first, first_length + 1);
    memcpy(paths + first_length + 1, second, second_length + 1);
    if (!self->started) {
        int error = pthread_create(&self->thread, NULL, work, self);
        if (error != 0) {
            free(paths);
            errno = error;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        self->started = 1;
    }
    pthread_mutex_lock(&self->mutex);
    Job *job = &self->jobs[self->tail % self->capacity];
    job->paths = paths;
    job->first_length = first_length;
    job->size = size;
    job->state = JOB_QUEUED;
    self->tail++;
    if (self->worker_waits)
        pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

static PyObject *
Comparer_ready(Comparer *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    pthread_mutex_lock(&self->mutex);
    int ready = self->head < self->tail
                && self->jobs[self->head % self->capacity].state == JOB_DONE;
    pthread_mutex_unlock(&self->mutex);
    return PyBool_FromLong(ready);
}

static PyObject *
Comparer_take(Comparer *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    if (self->taking) {
        PyErr_SetString(PyExc_RuntimeError, "another thread is taking a result");
        return NULL;
    }
    if (self->head == self->tail) {
        PyErr_SetString(PyExc_RuntimeError, "no comparison is queued");
        return NULL;
    }
    Job job;
    Job *slot = &self->jobs[self->head % self->capacity];
    self->taking = 1;
    for (;;) {
        int done, closed;
        Py_BEGIN_ALLOW_THREADS
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += WAIT_MS * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&self->mutex);
        while (slot->state != JOB_DONE && !self->closing) {
            self->taker_waits = 1;
            int waited = pthread_cond_timedwait(&self->changed, &self->mutex, &deadline);
            self->taker_waits = 0;
            if (waited == ETIMEDOUT)
                break;
        }
        done = slot->state == JOB_DONE;
        closed = self->closing;
        if (done) {
            job = *slot;
            slot->paths = NULL;
            self->head++;
        }
        pthread_mutex_unlock(&self->mutex);
        Py_END_ALLOW_THREADS
        if (done)
            break;
        if (closed) {
            self->taking = 0;
            PyErr_SetString(PyExc_ValueError, "the Comparer was closed while waiting");
            return NULL;
        }
        /* A signal handler that raises (Ctrl-C) ends the wait; the job stays queued
           until close() drops it. */
        if (PyErr_CheckSignals() < 0) {
            self->taking = 0;
            return NULL;
        }
    }
    self->taking = 0;
    PyObject *result = NULL;
    if (job.result >= 0) {
        result = PyBool_FromLong(job.result);
    }
    else {
        const char *path = job.failed ? job.paths + job.first_length + 1 : job.paths;
        PyObject *name = PyBytes_FromString(path);
        if (name != NULL) {
            errno = job.error;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
            Py_DECREF(name);
        }
    }
    free(job.paths);
    return result;
}

static PyObject *
Comparer_close(Comparer *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->initialised)
        Py_RETURN_NONE;
    if (self->taking) {
        PyErr_SetString(PyExc_RuntimeError, "another thread is taking a result");
        return NULL;
    }
    if (self->generation != fork_generation) {
        /* A child of fork(): no thread to stop, and the mutex may be held for good. */
        self->closing = 1;
        Py_RETURN_NONE;
    }
    /* Closed before the GIL is released, so that no take() starts a wait after it. */
    pthread_mutex_lock(&self->mutex);
    __atomic_store_n(&self->closing, 1, __ATOMIC_RELAXED);
    pthread_cond_broadcast(&self->changed);
    pthread_mutex_unlock(&self->mutex);
    Py_BEGIN_ALLOW_THREADS
    stop_thread(self);
    Py_END_ALLOW_THREADS
    free_jobs(self);
    Py_RETURN_NONE;
}

static void
Comparer_dealloc(Comparer *self)
{
    if (self->initialised && self->generation != fork_generation) {
        /* In a child of fork() there is no thread to join; only the memory goes. */
        free_jobs(self);
    }
    else if (self->initialised) {
        Py_BEGIN_ALLOW_THREADS
        stop_thread(self);
        Py_END_ALLOW_THREADS
        free_jobs(self);
        pthread_mutex_destroy(&self->mutex);
        pthread_cond_destroy(&self->changed);
    }
    free(self->jobs);
    free(self->buffers[0]);
    free(self->buffers[1]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Comparer_methods[] = {
    {"submit", (PyCFunction)Comparer_submit, METH_VARARGS,
     PyDoc_STR("submit(first, second, size)\n\nQueue the comparison of two regular files.")},
    {"ready", (PyCFunction)Comparer_ready, METH_NOARGS,
     PyDoc_STR("Whether the oldest queued comparison has finished.")},
    {"take", (PyCFunction)Comparer_take, METH_NOARGS,
     PyDoc_STR("Wait for the oldest queued comparison and return whether the files "
               "are equal.")},
    {"close", (PyCFunction)Comparer_close, METH_NOARGS,
     PyDoc_STR("Drop the queued comparisons and join the thread.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ComparerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ocilayer._compare.Comparer",
    .tp_doc = PyDoc_STR("Comparer(capacity=1024)\n\n"
                        "Compare pairs of files on a thread of its own, in order."),
    .tp_basicsize = sizeof(Comparer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Comparer_init,
    .tp_dealloc = (destructor)Comparer_dealloc,
    .tp_methods = Comparer_methods,
};

static struct PyModuleDef compare_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ocilayer._compare",
    .m_doc = PyDoc_STR("The content comparisons of a diff export, on a thread of their own."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__compare(void)
{
    if (PyType_Ready(&ComparerType) < 0)
        return NULL;
    if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return NULL;
    }
    PyObject *module = PyModule_Create(&compare_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ComparerType);
    if (PyModule_AddObject(module, "Comparer", (PyObject *)&ComparerType) < 0) {
        Py_DECREF(&ComparerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
