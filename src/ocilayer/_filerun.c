/*
 * ocilayer._filerun: create a run of new files and symlinks of one directory, in C.
 *
 * create_files(data, position, dir_fd, directory, chown) reads tar entries from
 * data[position:] while each is a plain regular file or symlink directly in
 * `directory`, the entry path of the directory open at `dir_fd`. It creates each one
 * there with the Python applier's system calls, in the same order:
 *
 *   - a file: an exclusive, non-following create with mode 0600, its data, then
 *     owner (when `chown` is true), mode and times;
 *   - a symlink: symlinkat, then owner (when `chown` is true) and times, neither
 *     following the link.
 *
 * It stops, before the entry, at anything else:
 *
 *   - a header that is not a USTAR header with octal fields and a valid unsigned
 *     checksum, or has another type than '0' or '2', a name in another directory, a
 *     name component that is empty, `.`, `..` or starts with `.wh.`;
 *   - a symlink with an empty target or a non-zero size field;
 *   - an entry whose data and padding are not all in `data`, data over MAX_DATA
 *     (256 KiB), or data of at least 4 KiB that is all zeros (the Python applier
 *     writes a hole);
 *   - a name that exists (EEXIST), or any failing system call, after which the file
 *     it created is removed again.
 *
 * The Python applier then takes that entry, with its own checks and error messages.
 * It returns (consumed bytes, names created, data bytes written). The loop runs with
 * the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define BLOCK 512
/* Larger files go to the Python applier, which copies them in chunks. */
#define MAX_DATA (1 << 18)
#define HOLE_SIZE 4096

typedef struct {
    size_t offset; /* of the base name in the names arena */
    size_t length;
} Created;

/* Parse an octal field the way the Python fast path does: NULs and spaces around
   the digits, at least one digit, nothing else. -1 when it does not. */
static long long
parse_octal(const char *field, size_t width)
{
    size_t start = 0, end = width;
    while (start < end && (field[start] == ' ' || field[start] == 0))
        start++;
    while (end > start && (field[end - 1] == ' ' || field[end - 1] == 0))
        end--;
    if (start == end || end - start > 21)
        return -1;
    long long value = 0;
    for (size_t i = start; i < end; i++) {
        if (field[i] < '0' || field[i] > '7')
            return -1;
        value = value * 8 + (field[i] - '0');
    }
    return value;
}

static size_t
field_length(const char *field, size_t width)
{
    const char *end = memchr(field, 0, width);
    return end == NULL ? width : (size_t)(end - field);
}

static int
all_zero(const unsigned char *data, size_t size)
{
    for (size_t i = 0; i < size; i++)
        if (data[i] != 0)
            return 0;
    return 1;
}

typedef struct {
    const char *name; /* the base name, inside the header block */
    size_t name_length;
    char typeflag;
    long long mode, uid, gid, size, mtime;
} Plain;

/* Check one header block; 0 when it is a plain file or symlink directly in `directory`. */
static int
parse_plain(const unsigned char *block, const char *directory, size_t directory_length,
            Plain *out)
{
    const char *text = (const char *)block;
    out->typeflag = (char)block[156];
    if (memcmp(text + 257, "ustar\0" "00", 8) != 0
        || (out->typeflag != '0' && out->typeflag != '2'))
        return -1;
    long long checksum = parse_octal(text + 148, 8);
    out->mode = parse_octal(text + 100, 8);
    out->uid = parse_octal(text + 108, 8);
    out->gid = parse_octal(text + 116, 8);
    out->size = parse_octal(text + 124, 12);
    out->mtime = parse_octal(text + 136, 12);
    if (checksum < 0 || out->mode < 0 || out->uid < 0 || out->gid < 0 || out->size < 0
        || out->mtime < 0 || parse_octal(text + 329, 8) < 0 || parse_octal(text + 337, 8) < 0)
        return -1;
    /* The checksum counts its own field as eight spaces. A plain sum over the block,
       corrected afterwards, lets the compiler vectorise the loop. */
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += block[i];
    for (int i = 148; i < 156; i++)
        sum -= block[i];
    sum += 8 * ' ';
    if ((long long)sum != checksum)
        return -1;

    /* The entry path is prefix/name; it must be directory/base. */
    size_t name_length = field_length(text, 100);
    size_t prefix_length = field_length(text + 345, 155);
    const char *base;
    size_t base_length;
    if (prefix_length > 0) {
        if (prefix_length != directory_length
            || memcmp(text + 345, directory, directory_length) != 0)
            return -1;
        base = text;
        base_length = name_length;
    } else if (directory_length == 0) {
        base = text;
        base_length = name_length;
    } else {
        if (name_length <= directory_length + 1 || text[directory_length] != '/'
            || memcmp(text, directory, directory_length) != 0)
            return -1;
        base = text + directory_length + 1;
        base_length = name_length - directory_length - 1;
    }
    if (base_length == 0 || memchr(base, '/', base_length) != NULL)
        return -1;
    if (base[0] == '.'
        && (base_length == 1 || (base_length == 2 && base[1] == '.')
            || (base_length >= 4 && memcmp(base, ".wh.", 4) == 0)))
        return -1;
    /* The Python reader skips no data after a symlink, whatever the size field is. */
    if (out->typeflag == '2' && (out->size != 0 || text[157] == 0))
        return -1;
    out->name = base;
    out->name_length = base_length;
    return 0;
}

static int
write_all(int fd, const unsigned char *data, size_t size)
{
    while (size > 0) {
        ssize_t written = write(fd, data, size);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += written;
        size -= (size_t)written;
    }
    return 0;
}

/* Create one file; -1 when the Python applier should take the entry (nothing left). */
static int
create_file(int dir_fd, const Plain *entry, const unsigned char *data, int chown_files)
{
    char name[256];
    memcpy(name, entry->name, entry->name_length);
    name[entry->name_length] = 0;
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = (time_t)entry->mtime;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    if (write_all(fd, data, (size_t)entry->size) != 0
        || (chown_files && fchown(fd, (uid_t)entry->uid, (gid_t)entry->gid) != 0)
        || fchmod(fd, (mode_t)(entry->mode & 07777)) != 0 || futimens(fd, times) != 0) {
        close(fd);
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    if (close(fd) != 0) {
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    return 0;
}

/* Create one symlink; -1 when the Python applier should take the entry (nothing left). */
static int
create_symlink(int dir_fd, const Plain *entry, const unsigned char *block, int chown_files)
{
    char name[256], target[101];
    memcpy(name, entry->name, entry->name_length);
    name[entry->name_length] = 0;
    size_t target_length = field_length((const char *)block + 157, 100);
    memcpy(target, block + 157, target_length);
    target[target_length] = 0;
    if (symlinkat(target, dir_fd, name) != 0)
        return -1;
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = (time_t)entry->mtime;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    if ((chown_files
         && fchownat(dir_fd, name, (uid_t)entry->uid, (gid_t)entry->gid, AT_SYMLINK_NOFOLLOW)
                != 0)
        || utimensat(dir_fd, name, times, AT_SYMLINK_NOFOLLOW) != 0) {
        unlinkat(dir_fd, name, 0);
        return -1;
    }
    return 0;
}

static PyObject *
create_files(PyObject *Py_UNUSED(module), PyObject *args)
{
    /* Any buffer: the reader passes a view of its own reusable buffer. The GIL is
       released during the loop, so each header is copied before it is checked and
       its name is taken from that copy: a buffer changed by another thread could
       change file data, never a checked name. */
    Py_buffer buffer;
    Py_ssize_t position;
    int dir_fd, chown_files;
    const char *directory;
    Py_ssize_t directory_length;
    if (!PyArg_ParseTuple(args, "y*niy#p", &buffer, &position, &dir_fd, &directory,
                          &directory_length, &chown_files))
        return NULL;
    if (position < 0 || position > buffer.len) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_ValueError, "position is outside the buffer");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)buffer.buf;
    size_t length = (size_t)buffer.len;
    size_t offset = (size_t)position;
    size_t capacity = 64, count = 0;
    size_t arena_capacity = 64 * 100, arena_used = 0;
    Created *created = malloc(capacity * sizeof(Created));
    char *arena = malloc(arena_capacity);
    long long written = 0;
    if (created == NULL || arena == NULL) {
        free(created);
        free(arena);
        PyBuffer_Release(&buffer);
        return PyErr_NoMemory();
    }

    Py_BEGIN_ALLOW_THREADS
    unsigned char header[BLOCK];
    while (length - offset >= BLOCK) {
        Plain entry;
        memcpy(header, data + offset, BLOCK);
        if (parse_plain(header, directory, (size_t)directory_length, &entry) != 0)
            break;
        size_t size = (size_t)entry.size;
        size_t padded = size + (BLOCK - size % BLOCK) % BLOCK;
        if (entry.size > MAX_DATA || length - offset - BLOCK < padded)
            break;
        const unsigned char *content = data + offset + BLOCK;
        if (size >= HOLE_SIZE && all_zero(content, size))
            break;
        if (count == capacity) {
            Created *grown = realloc(created, 2 * capacity * sizeof(Created));
            if (grown == NULL)
                break;
            created = grown;
            capacity *= 2;
        }
        if (arena_capacity - arena_used < entry.name_length) {
            char *grown = realloc(arena, 2 * arena_capacity);
            if (grown == NULL)
                break;
            arena = grown;
            arena_capacity *= 2;
        }
        int failed = entry.typeflag == '2'
                         ? create_symlink(dir_fd, &entry, header, chown_files)
                         : create_file(dir_fd, &entry, content, chown_files);
        if (failed)
            break;
        memcpy(arena + arena_used, entry.name, entry.name_length);
        created[count].offset = arena_used;
        created[count].length = entry.name_length;
        arena_used += entry.name_length;
        count++;
        written += entry.size;
        offset += BLOCK + padded;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buffer);

    PyObject *names = PyList_New((Py_ssize_t)count);
    for (size_t i = 0; names != NULL && i < count; i++) {
        PyObject *name = PyBytes_FromStringAndSize(arena + created[i].offset,
                                                   (Py_ssize_t)created[i].length);
        if (name == NULL)
            Py_CLEAR(names);
        else
            PyList_SET_ITEM(names, (Py_ssize_t)i, name);
    }
    free(created);
    free(arena);
    if (names == NULL)
        return NULL;
    return Py_BuildValue("(nNL)", (Py_ssize_t)(offset - (size_t)position), names, written);
}

static PyObject *
starts_run(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer buffer;
    Py_ssize_t position;
    const char *directory;
    Py_ssize_t directory_length;
    if (!PyArg_ParseTuple(args, "y*ny#", &buffer, &position, &directory, &directory_length))
        return NULL;
    int starts = 0;
    if (position >= 0 && buffer.len - position >= BLOCK) {
        unsigned char header[BLOCK];
        Plain entry;
        memcpy(header, (const unsigned char *)buffer.buf + position, BLOCK);
        starts = parse_plain(header, directory, (size_t)directory_length, &entry) == 0;
    }
    PyBuffer_Release(&buffer);
    return PyBool_FromLong(starts);
}

static PyMethodDef filerun_methods[] = {
    {"starts_run", starts_run, METH_VARARGS,
     PyDoc_STR("starts_run(data, position, directory) -> bool\n\n"
               "Whether the header at data[position:] is one that create_files takes.")},
    {"create_files", create_files, METH_VARARGS,
     PyDoc_STR("create_files(data, position, dir_fd, directory, chown) -> "
               "(consumed, names, data_bytes)\n\n"
               "Create the run of plain regular files of one directory that starts at "
               "data[position:].")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef filerun_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ocilayer._filerun",
    .m_doc = PyDoc_STR("Create a run of new regular files of one directory, in C."),
    .m_size = -1,
    .m_methods = filerun_methods,
};

PyMODINIT_FUNC
PyInit__filerun(void)
{
    PyObject *module = PyModule_Create(&filerun_module);
    if (module != NULL && PyModule_AddIntConstant(module, "MAX_DATA", MAX_DATA) < 0)
        Py_CLEAR(module);
    return module;
}
