/*
 * ocilayer._packer: the per-entry loop of a base layer export, in C.
 *
 * A DirPacker walks the children of one directory in byte order of their names. It
 * writes the tar entries of the common ones itself. Those are regular files with one
 * link, directories and symlinks, with no xattrs, a USTAR-sized header and a
 * whole-second mtime. Its iterator yields
 *
 *   (PACKED, data, count, child) finished tar data: `count` headers, file data and
 *                                padding, about 1 MiB at most. A large file's data
 *                                runs on over the next PACKED items. `child` is
 *                                None, or (name, st_dev, st_ino) of the directory
 *                                whose header ends `data` and which the caller walks
 *                                next, passing that identity to its DirPacker.
 *   (UNUSUAL, name)              a child the caller writes itself (and walks into if
 *                                it is a directory): any other type, a hardlink,
 *                                xattrs, a long or non-ASCII name, a sparse file over
 *                                1 MiB, a file that changed before its first data
 *                                was returned, any error.
 *   (FAILED, name, errno, size)  a file whose data was partly returned could not be
 *                                read to its end: errno 0 means that it is no
 *                                longer `size` bytes long.
 *
 * A child directory is opened without following a symlink, and it and a directory
 * opened again after a pause must have the identity (st_dev, st_ino) seen before, so
 * a directory swapped for a symlink or another directory during the walk raises
 * DirectoryChanged instead of leading the walk out of the tree. Files are opened
 * relative to the directory's descriptor.
 *
 * The bytes are those of the Python writer for the same entry (encode_plain_ustar:
 * Go's archive/tar USTAR layout, empty user and group names, devmajor and devminor
 * written as 0000000). The tests compare both writers on the same trees. The walk
 * runs with the GIL released, so compression threads keep running.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BLOCK 512
#define NAME_FIELD 100
/* A PACKED item is returned once it contains this many bytes. */
#define RUN_TARGET (1 << 20)
#define FIRST_CAPACITY (1 << 16)
#define OCTAL_7_MAX ((1LL << 21) - 1)
#define OCTAL_11_MAX ((1LL << 33) - 1)

enum { ITEM_PACKED = 0, ITEM_UNUSUAL = 1, ITEM_FAILED = 2 };
enum { CHILD_PACKED, CHILD_DIRECTORY, CHILD_UNUSUAL };
/* Why a run of packing stopped. */
enum { STOP_FULL, STOP_END, STOP_DIRECTORY, STOP_UNUSUAL, STOP_FAILED };

typedef struct {
    char *name;
    size_t length;
} Child;

/* Raised when a directory is not the one that was listed or walked into. */
static PyObject *DirectoryChanged;

typedef struct {
    PyObject_HEAD
    int initialised;
    /* Set while next() or pause() runs, which release the GIL. */
    int busy;
    int dirfd;
    /* The directory's identity, checked when it is opened again after a pause. */
    dev_t dev;
    ino_t ino;
    /* Whether the caller gave the identity: then symlinks are never followed. */
    int expect_identity;
    /* The identity of the directory child that ended the last run. */
    dev_t child_dev;
    ino_t child_ino;
    PyObject *directory; /* bytes: the directory's path, for listxattr */
    PyObject *prefix;    /* bytes: its path inside the layer, "" or ending in "/" */
    Child *children;
    size_t count;
    size_t next;
    int prefix_ascii;
    int check_xattrs;
    int keep_nanoseconds;
    int has_epoch;
    long long epoch;
    char *buffer;
    size_t length;
    size_t capacity;
    Py_ssize_t entries;
    /* The unusual or failed child that ended the run returned before it. */
    int pending_kind;
    size_t pending_child;
    int pending_errno;
    /* The regular file whose data is being copied, or -1. */
    int file_fd;
    size_t file_child;
    unsigned long long file_size;
    unsigned long long file_left;
    /* Offset of its header when the header is in the buffer, which is not yet returned. */
    size_t file_header;
    int file_header_buffered;
} DirPacker;

static int open_directory(DirPacker *self);

static int
compare_children(const void *left, const void *right)
{
    const Child *a = left, *b = right;
    size_t common = a->length < b->length ? a->length : b->length;
    int order = memcmp(a->name, b->name, common);
    if (order != 0)
        return order;
    return (a->length > b->length) - (a->length < b->length);
}

static void
free_children(DirPacker *self)
{
    for (size_t i = 0; i < self->count; i++)
        free(self->children[i].name);
    free(self->children);
    self->children = NULL;
    self->count = 0;
}

/* Read the names of the directory open at `dirfd` and sort them; -1 with errno set. */
static int
scan_directory(DirPacker *self)
{
    int fd = fcntl(self->dirfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    size_t capacity = 0;
    struct dirent *item;
    for (;;) {
        errno = 0;
        item = readdir(dir);
        if (item == NULL)
            break;
        const char *name = item->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        if (self->count == capacity) {
            size_t grown = capacity ? capacity * 2 : 64;
            Child *children = realloc(self->children, grown * sizeof(Child));
            if (children == NULL)
                goto failed;
            self->children = children;
            capacity = grown;
        }
        size_t length = strlen(name);
        char *copy = malloc(length + 1);
        if (copy == NULL)
            goto failed;
        memcpy(copy, name, length + 1);
        self->children[self->count].name = copy;
        self->children[self->count].length = length;
        self->count++;
    }
    if (errno != 0)
        goto failed;
    closedir(dir);
    if (self->count > 1)
        qsort(self->children, self->count, sizeof(Child), compare_children);
    return 0;

failed: {
    int saved = errno ? errno : ENOMEM;
    closedir(dir);
    errno = saved;
    return -1;
}
}

static int
reserve(DirPacker *self, size_t extra)
{
    if (self->length + extra <= self->capacity)
        return 0;
    size_t capacity = self->capacity ? self->capacity : FIRST_CAPACITY;
    while (capacity < self->length + extra)
        capacity *= 2;
    char *buffer = realloc(self->buffer, capacity);
    if (buffer == NULL)
        return -1;
    self->buffer = buffer;
    self->capacity = capacity;
    return 0;
}

static void
put_octal(char *field, int width, unsigned long long value)
{
    /* width - 1 zero-padded digits, then NUL; the caller checked that the value fits. */
    field[width - 1] = 0;
    for (int i = width - 2; i >= 0; i--) {
        field[i] = (char)('0' + (value & 7));
        value >>= 3;
    }
}

static int
is_ascii(const char *text, size_t length)
{
    for (size_t i = 0; i < length; i++)
        if ((unsigned char)text[i] >= 0x80)
            return 0;
    return 1;
}

/* Append a USTAR header at the end of the buffer; the caller reserved the space. */
static void
put_header(DirPacker *self, const char *prefix, size_t prefix_length, const Child *child,
           int directory, char typeflag, const struct stat *st, unsigned long long size,
           long long mtime, const char *linkname, size_t link_length)
{
    char *block = self->buffer + self->length;
    memset(block, 0, BLOCK);
    memcpy(block, prefix, prefix_length);
    memcpy(block + prefix_length, child->name, child->length);
    if (directory)
        block[prefix_length + child->length] = '/';
    put_octal(block + 100, 8, st->st_mode & 07777);
    put_octal(block + 108, 8, st->st_uid);
    put_octal(block + 116, 8, st->st_gid);
    put_octal(block + 124, 12, size);
    put_octal(block + 136, 12, (unsigned long long)mtime);
    block[156] = typeflag;
    memcpy(block + 157, linkname, link_length);
    memcpy(block + 257, "ustar\0" "00", 8);
    put_octal(block + 329, 8, 0);
    put_octal(block + 337, 8, 0);
    memset(block + 148, ' ', 8);
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += (unsigned char)block[i];
    /* Six octal digits, NUL, space. */
    put_octal(block + 148, 7, sum);
    block[155] = ' ';
    self->length += BLOCK;
}

/* Whether the path has xattrs; 1 also when listing them failed, so the Python path
   reports the error. */
static int
has_xattrs_at(DirPacker *self, const Child *child, int fd)
{
    ssize_t size;
    if (fd >= 0) {
        size = flistxattr(fd, NULL, 0);
    } else {
        char path[PATH_MAX];
        const char *directory = PyBytes_AS_STRING(self->directory);
        int written = snprintf(path, sizeof path, "%s/%s", directory, child->name);
        if (written < 0 || (size_t)written >= sizeof path)
            return 1;
        size = llistxattr(path, NULL, 0);
    }
    if (size == 0)
        return 0;
    if (size < 0 && (errno == ENOTSUP || errno == ENODATA))
        return 0;
    return 1;
}

/* Open a regular file for copying, as the Python reader opens it; -1 when the Python
   writer should take it. */
static int
open_file(DirPacker *self, const Child *child, const struct stat *st)
{
    int fd = openat(self->dirfd, child->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    struct stat opened;
    if (fstat(fd, &opened) != 0 || !S_ISREG(opened.st_mode)
        || (self->check_xattrs && has_xattrs_at(self, child, fd))) {
        close(fd);
        return -1;
    }
    /* Blocking again, as for any regular file. O_NONBLOCK only kept a FIFO swapped in
       since the fstatat from blocking the open. */
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    self->file_fd = fd;
    self->file_size = (unsigned long long)st->st_size;
    self->file_left = self->file_size;
    return 0;
}

static void
close_file(DirPacker *self)
{
    if (self->file_fd >= 0) {
        close(self->file_fd);
        self->file_fd = -1;
    }
}

/* Copy the open file's data until it ends (0) or the buffer is full (1); -1 with
   errno set (0 when the file changed size) when it cannot be read to its end. */
static int
copy_file(DirPacker *self)
{
    while (self->file_left > 0) {
        if (self->length >= RUN_TARGET)
            return 1;
        size_t room = RUN_TARGET - self->length;
        size_t want = self->file_left < room ? (size_t)self->file_left : room;
        /* The last read requests one byte more, which arrives only if the file grew. */
        size_t extra = want == self->file_left;
        if (reserve(self, want + extra + BLOCK) != 0)
            return -1;
        ssize_t got = read(self->file_fd, self->buffer + self->length, want + extra);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0 || (unsigned long long)got > self->file_left) {
            errno = 0;
            return -1;
        }
        self->length += (size_t)got;
        self->file_left -= (unsigned long long)got;
    }
    close_file(self);
    size_t padding = (BLOCK - self->file_size % BLOCK) % BLOCK;
    memset(self->buffer + self->length, 0, padding);
    self->length += padding;
    return 0;
}

/* Write the entry of one child, or leave the buffer as it was and return CHILD_UNUSUAL. */
static int
pack_child(DirPacker *self, const char *prefix, size_t prefix_length, const Child *child)
{
    struct stat st;
    if (child->length >= 4 && memcmp(child->name, ".wh.", 4) == 0)
        return CHILD_UNUSUAL; /* the Python walk rejects it with its message */
    if (fstatat(self->dirfd, child->name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return CHILD_UNUSUAL;
    int directory = S_ISDIR(st.st_mode);
    char typeflag;
    if (directory)
        typeflag = '5';
    else if (st.st_nlink != 1)
        return CHILD_UNUSUAL; /* a hardlink group, symlinks included */
    else if (S_ISREG(st.st_mode))
        typeflag = '0';
    else if (S_ISLNK(st.st_mode))
        typeflag = '2';
    else
        return CHILD_UNUSUAL;

    /* The Python reader opens children by their full path, which fails at PATH_MAX. */
    if ((size_t)PyBytes_GET_SIZE(self->directory) + 1 + child->length >= PATH_MAX)
        return CHILD_UNUSUAL;
    size_t name_length = prefix_length + child->length + (size_t)directory;
    if (name_length > NAME_FIELD || !self->prefix_ascii
        || !is_ascii(child->name, child->length))
        return CHILD_UNUSUAL;
    if ((long long)st.st_uid > OCTAL_7_MAX || (long long)st.st_gid > OCTAL_7_MAX)
        return CHILD_UNUSUAL;
    long long mtime = (long long)st.st_mtim.tv_sec;
    if (self->keep_nanoseconds && st.st_mtim.tv_nsec != 0)
        return CHILD_UNUSUAL;
    if (self->has_epoch && mtime > self->epoch)
        mtime = self->epoch;
    if (mtime < 0 || mtime > OCTAL_11_MAX)
        return CHILD_UNUSUAL;
    /* A sparse file over 1 MiB goes to the Python writer, which skips its holes. */
    if (typeflag == '0'
        && (st.st_size > OCTAL_11_MAX
            || (st.st_size > RUN_TARGET && (long long)st.st_blocks * 512 < st.st_size)))
        return CHILD_UNUSUAL;

    char linkname[NAME_FIELD + 1];
    size_t link_length = 0;
    if (typeflag == '2') {
        ssize_t got = readlinkat(self->dirfd, child->name, linkname, sizeof linkname);
        if (got < 0 || got > NAME_FIELD || !is_ascii(linkname, (size_t)got))
            return CHILD_UNUSUAL;
        link_length = (size_t)got;
    }
    /* A file with data checks its xattrs through its descriptor, in open_file. */
    int has_data = typeflag == '0' && st.st_size > 0;
    if (self->check_xattrs && !has_data && has_xattrs_at(self, child, -1))
        return CHILD_UNUSUAL;
    if (reserve(self, BLOCK) != 0 || (has_data && open_file(self, child, &st) != 0))
        return CHILD_UNUSUAL;

    self->file_header = self->length;
    self->file_header_buffered = has_data;
    unsigned long long size = typeflag == '0' ? (unsigned long long)st.st_size : 0;
    put_header(self, prefix, prefix_length, child, directory, typeflag, &st, size, mtime,
               linkname, link_length);
    self->entries++;
    if (!directory)
        return CHILD_PACKED;
    self->child_dev = st.st_dev;
    self->child_ino = st.st_ino;
    return CHILD_DIRECTORY;
}

static PyObject *
child_name(DirPacker *self, size_t index)
{
    const Child *child = &self->children[index];
    return PyBytes_FromStringAndSize(child->name, (Py_ssize_t)child->length);
}

/* Hold no descriptor and no buffer while the caller walks a subdirectory, so that a
   deep tree costs neither per level. The next item opens the directory again. */
static void
pause_packer(DirPacker *self)
{
    if (self->dirfd >= 0) {
        close(self->dirfd);
        self->dirfd = -1;
    }
    free(self->buffer);
    self->buffer = NULL;
    self->capacity = 0;
}

/* Pack children into the buffer until it is full or a child stops the run. */
static int
pack_run(DirPacker *self, size_t *index)
{
    const char *prefix = PyBytes_AS_STRING(self->prefix);
    size_t prefix_length = (size_t)PyBytes_GET_SIZE(self->prefix);
    for (;;) {
        if (self->file_fd >= 0) {
            int copied = copy_file(self);
            if (copied > 0)
                return STOP_FULL;
            if (copied < 0) {
                *index = self->file_child;
                self->pending_errno = errno;
                return STOP_FAILED;
            }
        }
        if (self->length >= RUN_TARGET)
            return STOP_FULL;
        if (self->next >= self->count)
            return STOP_END;
        *index = self->next++;
        self->file_child = *index;
        int result = pack_child(self, prefix, prefix_length, &self->children[*index]);
        if (result == CHILD_DIRECTORY)
            return STOP_DIRECTORY;
        if (result == CHILD_UNUSUAL)
            return STOP_UNUSUAL;
    }
}

static int
check_not_busy(DirPacker *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "DirPacker is in use by another thread");
        return -1;
    }
    if (!self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "DirPacker is not initialised");
        return -1;
    }
    return 0;
}

static PyObject *
DirPacker_pause(DirPacker *self, PyObject *Py_UNUSED(ignored))
{
    if (check_not_busy(self) != 0)
        return NULL;
    pause_packer(self);
    Py_RETURN_NONE;
}

static PyObject *
pending_item(DirPacker *self)
{
    int kind = self->pending_kind;
    self->pending_kind = -1;
    PyObject *name = child_name(self, self->pending_child);
    if (name == NULL)
        return NULL;
    if (kind == ITEM_FAILED)
        return Py_BuildValue("(iNiK)", kind, name, self->pending_errno, self->file_size);
    return Py_BuildValue("(iN)", kind, name);
}

static PyObject *next_item(DirPacker *self);

static PyObject *
DirPacker_next(DirPacker *self)
{
    if (check_not_busy(self) != 0)
        return NULL;
    self->busy = 1;
    PyObject *item = next_item(self);
    self->busy = 0;
    return item;
}

static PyObject *
next_item(DirPacker *self)
{
    if (self->pending_kind >= 0)
        return pending_item(self);
    if (self->next >= self->count && self->file_fd < 0)
        return NULL; /* StopIteration */
    if (self->dirfd < 0 && open_directory(self) != 0)
        return NULL;

    int stop;
    size_t index = 0;
    Py_BEGIN_ALLOW_THREADS
    stop = pack_run(self, &index);
    Py_END_ALLOW_THREADS

    if (stop == STOP_FAILED) {
        close_file(self);
        if (self->file_header_buffered) {
            /* Nothing of this file was returned yet: the Python writer takes it. */
            self->length = self->file_header;
            self->entries--;
            stop = STOP_UNUSUAL;
        } else {
            self->pending_kind = ITEM_FAILED;
            self->pending_child = index;
        }
    }
    if (stop == STOP_UNUSUAL) {
        self->pending_kind = ITEM_UNUSUAL;
        self->pending_child = index;
    }
    if (self->length == 0)
        return self->pending_kind >= 0 ? pending_item(self) : NULL;

    PyObject *descend = Py_None;
    Py_INCREF(descend);
    if (stop == STOP_DIRECTORY) {
        Py_DECREF(descend);
        descend = Py_BuildValue("(NKK)", child_name(self, index),
                                (unsigned long long)self->child_dev,
                                (unsigned long long)self->child_ino);
        if (descend == NULL)
            return NULL;
    }
    PyObject *item = Py_BuildValue("(iy#nN)", ITEM_PACKED, self->buffer,
                                   (Py_ssize_t)self->length, self->entries, descend);
    self->length = 0;
    self->entries = 0;
    self->file_header_buffered = 0;
    if (stop == STOP_DIRECTORY)
        pause_packer(self);
    return item;
}

/* Open the directory without following a final symlink when its identity is known,
   and check that identity; -1 with an exception set. */
static int
open_directory(DirPacker *self)
{
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (self->expect_identity ? O_NOFOLLOW : 0);
    const char *path = PyBytes_AS_STRING(self->directory);
    struct stat st;
    int fd, failed;
    Py_BEGIN_ALLOW_THREADS
    fd = open(path, flags);
    failed = fd < 0 || fstat(fd, &st) != 0;
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->directory);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (self->expect_identity && (st.st_dev != self->dev || st.st_ino != self->ino)) {
        close(fd);
        PyErr_SetString(DirectoryChanged,
                        "it was replaced while it was being read; export from a layer "
                        "that is not in use");
        return -1;
    }
    self->dev = st.st_dev;
    self->ino = st.st_ino;
    self->expect_identity = 1;
    self->dirfd = fd;
    return 0;
}

static int
DirPacker_init(DirPacker *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"directory", "prefix", "check_xattrs", "keep_nanoseconds",
                               "source_date_epoch", "identity", NULL};
    PyObject *directory, *prefix, *epoch = Py_None, *identity = Py_None;
    int check_xattrs, keep_nanoseconds;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!pp|OO", keywords, &PyBytes_Type,
                                     &directory, &PyBytes_Type, &prefix, &check_xattrs,
                                     &keep_nanoseconds, &epoch, &identity))
        return -1;
    if (self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "DirPacker is already initialised");
        return -1;
    }
    if (strlen(PyBytes_AS_STRING(directory)) != (size_t)PyBytes_GET_SIZE(directory)) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte in the directory path");
        return -1;
    }
    if (epoch != Py_None) {
        self->epoch = PyLong_AsLongLong(epoch);
        if (self->epoch == -1 && PyErr_Occurred())
            return -1;
        self->has_epoch = 1;
    }
    if (identity != Py_None) {
        unsigned long long dev, ino;
        if (!PyArg_ParseTuple(identity, "KK", &dev, &ino))
            return -1;
        self->dev = (dev_t)dev;
        self->ino = (ino_t)ino;
        self->expect_identity = 1;
    }
    self->initialised = 1;
    Py_INCREF(directory);
    self->directory = directory;
    Py_INCREF(prefix);
    self->prefix = prefix;
    self->prefix_ascii = is_ascii(PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
    self->check_xattrs = check_xattrs;
    self->keep_nanoseconds = keep_nanoseconds;

    if (open_directory(self) != 0)
        return -1;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = scan_directory(self) != 0;
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, directory);
        return -1;
    }
    return 0;
}

static PyObject *
DirPacker_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    DirPacker *self = (DirPacker *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->dirfd = -1;
        self->file_fd = -1;
        self->pending_kind = -1;
    }
    return (PyObject *)self;
}

static void
DirPacker_dealloc(DirPacker *self)
{
    if (self->dirfd >= 0)
        close(self->dirfd);
    close_file(self);
    free_children(self);
    free(self->buffer);
    Py_XDECREF(self->directory);
    Py_XDECREF(self->prefix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef DirPacker_methods[] = {
    {"pause", (PyCFunction)DirPacker_pause, METH_NOARGS,
     PyDoc_STR("Close the directory and free the buffer until the next item.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DirPackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ocilayer._packer.DirPacker",
    .tp_doc = PyDoc_STR("DirPacker(directory, prefix, check_xattrs, keep_nanoseconds, "
                        "source_date_epoch=None, identity=None)\n\n"
                        "Iterate over the tar entries of one directory's children."),
    .tp_basicsize = sizeof(DirPacker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = DirPacker_new,
    .tp_init = (initproc)DirPacker_init,
    .tp_dealloc = (destructor)DirPacker_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)DirPacker_next,
    .tp_methods = DirPacker_methods,
};

static struct PyModuleDef packer_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ocilayer._packer",
    .m_doc = PyDoc_STR("The per-entry loop of a base layer export, in C."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__packer(void)
{
    if (PyType_Ready(&DirPackerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&packer_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "PACKED", ITEM_PACKED) < 0
        || PyModule_AddIntConstant(module, "UNUSUAL", ITEM_UNUSUAL) < 0
        || PyModule_AddIntConstant(module, "FAILED", ITEM_FAILED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    DirectoryChanged = PyErr_NewExceptionWithDoc(
        "ocilayer._packer.DirectoryChanged",
        "A directory is not the one that was listed: it was replaced during the walk.",
        PyExc_OSError, NULL);
    if (DirectoryChanged == NULL || PyModule_AddObjectRef(module, "DirectoryChanged",
                                                          DirectoryChanged) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&DirPackerType);
    if (PyModule_AddObject(module, "DirPacker", (PyObject *)&DirPackerType) < 0) {
        Py_DECREF(&DirPackerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
