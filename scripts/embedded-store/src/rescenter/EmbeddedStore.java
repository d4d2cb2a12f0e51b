package rescenter;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.KeyValue;
import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.ValueComparator;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;
import de.bwaldvogel.mongo.wire.bson.BsonDecoder;
import de.bwaldvogel.mongo.wire.bson.BsonEncoder;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Date;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import org.h2.mvstore.DataUtils;
import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;
import org.h2.mvstore.WriteBuffer;
import org.h2.mvstore.type.ObjectDataType;

/**
 * rescenter's embedded MongoDB-wire server: mongo-java-server on an H2 MVStore
 * file, for development, CI and small single-node installs.
 *
 * <p>Usage: {@code EmbeddedStore HOST PORT FILE [commit|fsync|background]}.
 *
 * <p>Durability. The MVStore keeps changes in memory and writes them to its file
 * on commit; left alone it commits once a second, so a crash of the process
 * loses the last second of acknowledged writes. Here every request that changed
 * something is committed before its answer goes out ({@code commit}, the
 * default): an acknowledged write survives {@code kill -9} of this process.
 * Concurrent writers share commits: a writer whose change an earlier commit
 * already carried finds nothing left to write. {@code fsync} also forces the
 * file to disk before answering (survives a power loss, costs a disk flush per
 * write); {@code background} commits once a second (measurements
 * only). A graceful stop (SIGTERM, SIGINT) commits and closes the file.
 *
 * <p>Reads by key. The library answers a filter through an index only when the
 * filter names exactly that index's fields: {@code {_id: x}} is a lookup, but
 * {@code {_id: x, _version: 3}} (every guarded write of the service) reads the
 * whole collection. {@link KeyedBackend} looks such a filter's document up by
 * {@code _id} first and matches the whole filter against it alone, as MongoDB
 * does with its {@code _id} index.
 *
 * <p>Documents on disk. The library stores each document with Java
 * serialization (a new object stream, class descriptors and reflection for
 * every document of every page written or read): under the service's load that
 * was a third of this server's CPU. {@link DocumentType} writes them as BSON;
 * documents already in a file in the old form are still read, and rewritten as
 * BSON when their page is next written.
 */
public final class EmbeddedStore {

    /** The library's presets are older than current PyMongo accepts; claim MongoDB 5.0 (wire version 13). */
    static final MongoVersion MONGO_5_0 = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(5, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 13;
        }
    };

    /**
     * Commands that never change data: no commit after them. Any other command,
     * known or not, is committed before its answer.
     */
    static final Set<String> READ_ONLY = Set.of(
            "find", "getMore", "count", "distinct", "killCursors", "endSessions",
            "hello", "ismaster", "isMaster", "ping", "buildInfo", "buildinfo", "getLastError",
            "listCollections", "listIndexes", "listDatabases", "serverStatus", "dbStats",
            "collStats", "connectionStatus", "getParameter", "getCmdLineOpts", "whatsmyuri",
            "saslStart", "saslContinue", "getFreeMonitoringStatus", "explain");

    /**
     * H2's page cache, in MB (its default is 16): pages outside it are read
     * and decoded again, so a scan of 20,000 orders (about 20 MB) decoded
     * every page each time with the default.
     */
    static final int CACHE_MB = 96;

    private EmbeddedStore() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 3 || args.length > 4) {
            System.err.println("usage: EmbeddedStore HOST PORT FILE [commit|fsync|background]");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path file = Path.of(args[2]).toAbsolutePath();
        String durability = args.length == 4 ? args[3] : "commit";
        if (!Set.of("commit", "fsync", "background").contains(durability)) {
            System.err.println("durability must be commit, fsync or background, not " + durability);
            System.exit(2);
        }
        Files.createDirectories(file.getParent());
        // Netty checks a buffer's reference count on every byte read (the
        // library's BSON decoder reads key names byte by byte): 8 % of the
        // store's CPU under load. The check only catches a use of a released
        // buffer, a bug of the server's own; bounds stay checked.
        System.setProperty("io.netty.buffer.checkAccessible", "false");

        // No commit of the library's own (background thread, or on memory
        // pressure inside a write): every commit and compaction runs under the
        // lock of committing(), never beside a write.
        MVStore store = new MVStore.Builder().fileName(file.toString()).cacheSize(CACHE_MB).autoCommitDisabled().open();
        H2Backend h2 = new KeyedBackend(store);
        h2.version(MONGO_5_0);
        MongoBackend backend = committing(h2, store, durability);

        MongoServer server = new MongoServer(backend);
        server.bind(host, port);
        System.err.printf("embedded store: %s:%d, data in %s, durability %s%n", host, port, file, durability);

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.shutdownNow();
            h2.close(); // commits what is left and closes the file
            System.err.println("embedded store: stopped, data committed");
        }, "embedded-store-shutdown"));
        Thread.currentThread().join();
    }

    /**
     * The backend, with a commit (and an fsync when asked) after every command
     * that may have written, before its answer is sent: the server encodes and
     * writes the answer only once the backend call returns.
     *
     * <p>Writes and commits exclude each other. The library updates a stored
     * document in place, while a commit serializes the pages that hold it:
     * without the lock a commit could write half an update (or, with BSON,
     * fail on the map changing under it). Writes share the read side of one
     * lock (the library already orders writes to a collection); a commit, and
     * the once-a-second upkeep (the commit of the {@code background} mode, the
     * compaction of partly used chunks), takes the write side.
     *
     * <p>{@code MVStore.commit()} stores whatever changed since the last one: a
     * writer whose change another commit already carried finds nothing left to
     * write, so one file write serves every writer that arrived during the
     * previous one.
     */
    static MongoBackend committing(H2Backend h2, MVStore store, String durability) {
        ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
        boolean perWrite = !durability.equals("background");
        boolean fsync = durability.equals("fsync");
        InvocationHandler handler = (proxy, method, args) -> {
            String command = commandOf(method.getName(), args);
            boolean writes = command != null && !READ_ONLY.contains(command);
            if (writes) {
                lock.readLock().lock();
            }
            try {
                Object result = method.invoke(h2, args);
                return method.getName().equals("version") ? proxy : result;
            } catch (InvocationTargetException e) {
                throw e.getCause(); // a failed batch may have written part of itself: committed below
            } finally {
                if (writes) {
                    lock.readLock().unlock();
                    if (perWrite) {
                        commit(store, lock, fsync);
                    }
                }
            }
        };
        Thread upkeep = new Thread(() -> {
            while (!store.isClosed()) {
                try {
                    Thread.sleep(1000);
                    lock.writeLock().lock();
                    try {
                        if (store.isClosed()) {
                            return;
                        }
                        if (store.hasUnsavedChanges()) {
                            store.commit();
                        }
                        store.compact(COMPACT_BELOW_FILL_RATE, COMPACT_BYTES_PER_SECOND);
                    } finally {
                        lock.writeLock().unlock();
                    }
                } catch (InterruptedException e) {
                    return;
                } catch (RuntimeException e) {
                    System.err.println("embedded store: upkeep failed: " + e);
                }
            }
        }, "embedded-store-upkeep");
        upkeep.setDaemon(true);
        upkeep.start();
        return (MongoBackend) Proxy.newProxyInstance(
                MongoBackend.class.getClassLoader(), new Class<?>[] {MongoBackend.class}, handler);
    }

    /**
     * The upkeep rewrites chunks once the file is less full than this. The
     * library's 90 kept it rewriting a megabyte every second under steady
     * writes (7 % of the store's CPU, reading old chunks back); at 50 a chunk
     * is rewritten when half of it is dead, half the work per byte freed, and
     * the file stays under twice its live data.
     */
    static final int COMPACT_BELOW_FILL_RATE = 50;

    /** At most this much rewritten per upkeep round, so writers wait at most for that. */
    static final int COMPACT_BYTES_PER_SECOND = 1 << 20;

    static void commit(MVStore store, ReentrantReadWriteLock lock, boolean fsync) {
        lock.writeLock().lock();
        try {
            store.commit();
            if (fsync) {
                store.sync();
            }
        } finally {
            lock.writeLock().unlock();
        }
    }

    /** The command a backend call runs for a client, or null for calls that are not requests. */
    static String commandOf(String method, Object[] args) {
        switch (method) {
            case "handleMessage": {
                Document body = ((MongoMessage) args[0]).getDocument();
                return body.isEmpty() ? "" : body.keySet().iterator().next();
            }
            case "handleCommand":
                return (String) args[2];
            case "handleQuery":
                return ""; // legacy OP_QUERY (not sent by current drivers): commit to be safe
            default:
                return null;
        }
    }

    /**
     * The H2 backend, with {@link KeyedCollection}s (filters naming {@code _id}
     * read through the {@code _id} index, no running data size), documents
     * stored as BSON ({@link DocumentType}) and indexes that are not unique kept
     * in memory ({@link OrderedIndex}).
     */
    static final class KeyedBackend extends H2Backend {

        KeyedBackend(MVStore store) {
            super(store);
        }

        @Override
        protected MongoDatabase openOrCreateDatabase(String databaseName) {
            return new KeyedDatabase(databaseName);
        }

        /** Opens collections as {@link H2Database} does, with the types above. */
        final class KeyedDatabase extends H2Database {

            KeyedDatabase(String databaseName) {
                super(databaseName, getMvStore(), getCursorRegistry());
            }

            /** The library ignores indexes that are not unique; these are kept in memory. */
            @Override
            protected Index<Object> openOrCreateSecondaryIndex(String collectionName, String indexName,
                                                               List<IndexKey> keys, boolean sparse) {
                return new OrderedIndex(indexName, keys, sparse);
            }

            @Override
            protected MongoCollection<Object> openOrCreateCollection(String collectionName, CollectionOptions options) {
                String namespace = getFullCollectionNamespace(collectionName);
                MVStore store = getMvStore();
                MVMap<Object, Document> data = store.openMap("databases." + namespace,
                        new MVMap.Builder<Object, Document>().valueType(new DocumentType()));
                MVMap<String, Object> meta = store.openMap("meta." + namespace);
                return new KeyedCollection(this, collectionName, options, data, meta, cursorRegistry);
            }
        }
    }

    /**
     * A collection whose filters that name {@code _id} among other fields read
     * the candidate document through the {@code _id} index, then match the whole
     * filter against it; any other filter goes the library's way (through an
     * {@link OrderedIndex} when one can narrow it).
     */
    static final class KeyedCollection extends H2Collection {

        private final MVMap<Object, Document> data;

        KeyedCollection(MongoDatabase database, String collectionName, CollectionOptions options,
                        MVMap<Object, Document> data, MVMap<String, Object> meta, CursorRegistry cursors) {
            super(database, collectionName, options, data, meta, cursors);
            this.data = data;
        }

        /**
         * The library keeps a running data size: it BSON-encodes the old and the
         * new document of every write and stores the sum, a fifth of this
         * server's CPU under the service's load. The size is computed instead
         * when asked ({@code collStats}, {@code dbStats}), which is rare.
         */
        @Override
        protected boolean tracksDataSize() {
            return false;
        }

        @Override
        protected int getDataSize() {
            if (data == null) { // asked by the library's constructor, before this one ran
                return super.getDataSize();
            }
            long size = 0;
            ByteBuf buffer = Unpooled.buffer();
            try {
                for (Document document : data.values()) {
                    buffer.clear();
                    BsonEncoder.encodeDocument(document, buffer);
                    size += buffer.writerIndex();
                }
            } finally {
                buffer.release();
            }
            return (int) Math.min(size, Integer.MAX_VALUE);
        }

        @Override
        protected QueryResult queryDocuments(Document query, Document orderBy, int numberToSkip, int limit,
                                             int batchSize, Document fieldSelector) {
            if (query.size() > 1 && query.containsKey("_id")) {
                Document byId = new Document("_id", query.get("_id"));
                for (Index<Object> index : getIndexes()) {
                    if (index.isUnique() && index.canHandle(byId)) {
                        Iterable<Object> candidates = index.getPositions(byId);
                        return matchDocuments(query, candidates, orderBy, numberToSkip, limit, batchSize,
                                fieldSelector);
                    }
                }
            }
            return super.queryDocuments(query, orderBy, numberToSkip, limit, batchSize, fieldSelector);
        }
    }

    /**
     * The data maps' value type: documents as BSON behind a tag of their own,
     * anything else (and every value already stored) as {@link ObjectDataType}
     * writes and reads it. The tag is one that type never writes (it uses 0 to
     * 119).
     */
    static final class DocumentType extends ObjectDataType {

        static final byte TAG_BSON = 127;

        /** Running average of the BSON size, for the page cache's accounting. */
        private volatile int averageSize = 1024;

        @Override
        public void write(WriteBuffer buffer, Object value) {
            if (!(value instanceof Document)) {
                super.write(buffer, value);
                return;
            }
            ByteBuf bson = Unpooled.buffer();
            try {
                BsonEncoder.encodeDocument((Document) value, bson);
                int size = bson.readableBytes();
                buffer.put(TAG_BSON).putVarInt(size).put(bson.array(), bson.arrayOffset() + bson.readerIndex(), size);
                averageSize = (averageSize * 15 + size) / 16;
            } finally {
                bson.release();
            }
        }

        @Override
        public Object read(ByteBuffer buffer) {
            if (buffer.get(buffer.position()) != TAG_BSON) {
                return super.read(buffer);
            }
            buffer.get();
            byte[] bson = new byte[DataUtils.readVarInt(buffer)];
            buffer.get(bson);
            ByteBuf wrapped = Unpooled.wrappedBuffer(bson);
            try {
                return BsonDecoder.decodeBson(wrapped);
            } finally {
                wrapped.release();
            }
        }

        @Override
        public int getMemory(Object value) {
            // A decoded document (maps, entries, strings, boxed numbers) takes
            // about four times its BSON size on the heap.
            return value instanceof Document ? 4 * averageSize : super.getMemory(value);
        }
    }

    /**
     * An index that is not unique, kept in memory and built from the documents
     * when the collection opens: the sorted values of its first field, each with
     * the positions of the documents holding it. It narrows a filter that
     * compares that field with a plain value ({@code $eq}, {@code $in},
     * {@code $lt}, {@code $lte}, {@code $gt}, {@code $gte}) to a superset of the
     * matching documents; the whole filter is then matched against each. Any
     * other filter on the field (null, {@code $exists}, {@code $ne}, a regular
     * expression, an array or a document) is not handled here: the collection
     * is scanned, as without the index.
     */
    static final class OrderedIndex extends Index<Object> {

        private static final Set<String> OPERATORS = Set.of("$eq", "$in", "$lt", "$lte", "$gt", "$gte");

        private final String field;
        private final ConcurrentSkipListMap<Object, Set<Object>> byValue =
                new ConcurrentSkipListMap<>(ValueComparator.asc());
        /** Each indexed document's values, to take them out again. */
        private final Map<Object, List<Object>> valuesOf = new ConcurrentHashMap<>();
        /** Documents whose values could not be read: candidates for every filter. */
        private final Set<Object> unread = ConcurrentHashMap.newKeySet();

        OrderedIndex(String name, List<IndexKey> keys, boolean sparse) {
            super(name, keys, sparse);
            this.field = keys.get(0).getKey();
        }

        private static boolean plain(Object value) {
            return value instanceof String || value instanceof Number || value instanceof Boolean
                    || value instanceof Instant || value instanceof Date || value instanceof ObjectId;
        }

        private List<Object> valuesIn(Document document) {
            try {
                List<Object> values = new ArrayList<>();
                for (KeyValue key : getKeyValues(document)) {
                    Object value = key.get(0);
                    if (plain(value) && !values.contains(value)) {
                        values.add(value);
                    }
                }
                return values;
            } catch (RuntimeException e) { // e.g. parallel arrays in a compound index
                return null;
            }
        }

        @Override
        public synchronized void add(Document document, Object position, MongoCollection<Object> collection) {
            List<Object> values = valuesIn(document);
            if (values == null) {
                unread.add(position);
                return;
            }
            for (Object value : values) {
                byValue.computeIfAbsent(value, v -> ConcurrentHashMap.newKeySet()).add(position);
            }
            valuesOf.put(position, values);
        }

        private void forget(Object position) {
            unread.remove(position);
            List<Object> values = valuesOf.remove(position);
            if (values != null) {
                for (Object value : values) {
                    Set<Object> positions = byValue.get(value);
                    if (positions != null) {
                        positions.remove(position);
                        if (positions.isEmpty()) {
                            byValue.remove(value, positions);
                        }
                    }
                }
            }
        }

        @Override
        public synchronized Object remove(Document document) {
            Object position = document.get("_id"); // the H2 backend's position is the document's _id
            forget(position);
            return position;
        }

        @Override
        public synchronized void updateInPlace(Document oldDocument, Document newDocument, Object position,
                                               MongoCollection<Object> collection) {
            forget(position);
            add(newDocument, position, collection);
        }

        @Override
        public boolean canHandle(Document query) {
            Object condition = query.get(field);
            if (plain(condition)) {
                return true;
            }
            if (!(condition instanceof Document) || ((Document) condition).isEmpty()) {
                return false;
            }
            for (Map.Entry<String, Object> entry : ((Document) condition).entrySet()) {
                if (!OPERATORS.contains(entry.getKey())) {
                    return false;
                }
                Object operand = entry.getValue();
                boolean usable = entry.getKey().equals("$in")
                        ? operand instanceof Collection && ((Collection<?>) operand).stream().allMatch(OrderedIndex::plain)
                        : plain(operand);
                if (!usable) {
                    return false;
                }
            }
            return true;
        }

        @Override
        public synchronized Iterable<Object> getPositions(Document query) {
            Object condition = query.get(field);
            Set<Object> candidates = new LinkedHashSet<>(unread);
            if (!(condition instanceof Document)) {
                candidates.addAll(byValue.getOrDefault(condition, Set.of()));
                return candidates;
            }
            Document operators = (Document) condition;
            if (operators.containsKey("$eq") || operators.containsKey("$in")) {
                Collection<?> values = operators.containsKey("$eq")
                        ? List.of(operators.get("$eq")) : (Collection<?>) operators.get("$in");
                for (Object value : values) {
                    candidates.addAll(byValue.getOrDefault(value, Set.of()));
                }
                return candidates;
            }
            NavigableMap<Object, Set<Object>> range = byValue;
            for (Map.Entry<String, Object> entry : operators.entrySet()) {
                Object bound = entry.getValue();
                switch (entry.getKey()) {
                    case "$lt": range = range.headMap(bound, false); break;
                    case "$lte": range = range.headMap(bound, true); break;
                    case "$gt": range = range.tailMap(bound, false); break;
                    default: range = range.tailMap(bound, true); break; // $gte
                }
            }
            for (Set<Object> positions : range.values()) {
                candidates.addAll(positions);
            }
            return candidates;
        }

        @Override
        public Object getPosition(Document document) {
            return null; // not unique: no single position for a document
        }

        @Override
        public void checkAdd(Document document, MongoCollection<Object> collection) {}

        @Override
        public void checkUpdate(Document oldDocument, Document newDocument, MongoCollection<Object> collection) {}

        @Override
        public long getCount() {
            return valuesOf.size() + unread.size();
        }

        @Override
        public long getDataSize() {
            return 0;
        }

        @Override
        public synchronized void drop() {
            byValue.clear();
            valuesOf.clear();
            unread.clear();
        }
    }
}
