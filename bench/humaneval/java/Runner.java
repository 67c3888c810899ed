import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.tools.Diagnostic;
import javax.tools.DiagnosticCollector;
import javax.tools.FileObject;
import javax.tools.ForwardingJavaFileManager;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.SimpleJavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;

/**
 * Compiles and runs many sample programs in one JVM (itself confined by the Python sandbox),
 * because a JVM start costs more than a sample. Each sample is compiled in memory and loaded by a
 * class loader of its own, so samples share no classes or static state; its main() runs on a
 * thread of its own with a time limit. After a sample overruns or leaves threads behind, the
 * runner reports and exits, and the harness starts a fresh one.
 *
 * <p>Protocol: the harness writes "RUN <id> <bytes>\n" and the UTF-8 source; the runner answers
 * one line "<token> <id> <status> <millis> <alive|exit> <base64 detail>" on its original stdout.
 * Samples' own output is discarded.
 */
public final class Runner {
    private static final Pattern PUBLIC_CLASS =
            Pattern.compile("(?m)^\\s*public\\s+(?:final\\s+)?class\\s+(\\w+)");

    private static final class Source extends SimpleJavaFileObject {
        private final String code;

        Source(String className, String code) {
            super(URI.create("string:///" + className + ".java"), Kind.SOURCE);
            this.code = code;
        }

        @Override
        public CharSequence getCharContent(boolean ignoreEncodingErrors) {
            return code;
        }
    }

    private static final class ClassBytes extends SimpleJavaFileObject {
        final ByteArrayOutputStream bytes = new ByteArrayOutputStream();

        ClassBytes(String name) {
            super(URI.create("bytes:///" + name.replace('.', '/') + ".class"), Kind.CLASS);
        }

        @Override
        public OutputStream openOutputStream() {
            return bytes;
        }
    }

    private static final class MemoryFiles extends ForwardingJavaFileManager<StandardJavaFileManager> {
        final Map<String, ClassBytes> classes = new HashMap<>();

        MemoryFiles(StandardJavaFileManager files) {
            super(files);
        }

        @Override
        public JavaFileObject getJavaFileForOutput(
                Location location, String name, JavaFileObject.Kind kind, FileObject sibling) {
            ClassBytes out = new ClassBytes(name);
            classes.put(name, out);
            return out;
        }
    }

    private static final class SampleLoader extends ClassLoader {
        private final Map<String, ClassBytes> classes;

        SampleLoader(Map<String, ClassBytes> classes) {
            super(Runner.class.getClassLoader());
            this.classes = classes;
            setDefaultAssertionStatus(true); // MultiPL-E's tests use `assert`
        }

        @Override
        protected Class<?> findClass(String name) throws ClassNotFoundException {
            ClassBytes c = classes.get(name);
            if (c == null) {
                throw new ClassNotFoundException(name);
            }
            byte[] b = c.bytes.toByteArray();
            return defineClass(name, b, 0, b.length);
        }
    }

    private record Outcome(String status, String detail, boolean exit) {}

    private final JavaCompiler compiler = ToolProvider.getSystemJavaCompiler();
    private final StandardJavaFileManager files =
            compiler.getStandardFileManager(null, null, StandardCharsets.UTF_8);
    private final List<String> options;
    private final long timeoutMillis;

    private Runner(long timeoutMillis) {
        this.timeoutMillis = timeoutMillis;
        this.options = List.of("-nowarn", "-proc:none", "-g:source,lines", "-encoding", "UTF-8",
                "-classpath", System.getProperty("java.class.path"));
    }

    public static void main(String[] args) throws IOException {
        String token = args[0];
        Runner runner = new Runner(Long.parseLong(args[1]));
        PrintStream out = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.out),
                true, StandardCharsets.UTF_8);
        PrintStream discard = new PrintStream(OutputStream.nullOutputStream());
        System.setOut(discard);
        System.setErr(discard);
        DataInputStream in = new DataInputStream(new BufferedInputStream(System.in));
        String header;
        while ((header = readLine(in)) != null) {
            String[] parts = header.split(" ");
            byte[] source = new byte[Integer.parseInt(parts[2])];
            in.readFully(source);
            long start = System.nanoTime();
            Outcome o = runner.runOne(new String(source, StandardCharsets.UTF_8));
            long millis = (System.nanoTime() - start) / 1_000_000;
            String detail = Base64.getEncoder().encodeToString(
                    o.detail().getBytes(StandardCharsets.UTF_8));
            out.println(token + " " + parts[1] + " " + o.status() + " " + millis + " "
                    + (o.exit() ? "exit" : "alive") + " " + detail);
            if (o.exit()) {
                Runtime.getRuntime().halt(0);
            }
        }
    }

    private static String readLine(DataInputStream in) throws IOException {
        StringBuilder line = new StringBuilder();
        int c;
        while ((c = in.read()) != -1 && c != '\n') {
            line.append((char) c);
        }
        return c == -1 && line.length() == 0 ? null : line.toString();
    }

    private Outcome runOne(String code) {
        Matcher m = PUBLIC_CLASS.matcher(code);
        String fileName = m.find() ? m.group(1) : "Main";
        DiagnosticCollector<JavaFileObject> diagnostics = new DiagnosticCollector<>();
        MemoryFiles memory = new MemoryFiles(files);
        boolean ok;
        try {
            ok = compiler.getTask(null, memory, diagnostics, options, null,
                    List.of(new Source(fileName, code))).call();
        } catch (RuntimeException e) {
            return new Outcome("compile_error", String.valueOf(e), false);
        }
        if (!ok) {
            StringBuilder msg = new StringBuilder();
            for (Diagnostic<? extends JavaFileObject> d : diagnostics.getDiagnostics()) {
                if (d.getKind() == Diagnostic.Kind.ERROR && msg.length() < 2000) {
                    msg.append("line ").append(d.getLineNumber()).append(": ")
                            .append(d.getMessage(null)).append('\n');
                }
            }
            return new Outcome("compile_error", msg.toString(), false);
        }
        Method main;
        try {
            main = findMain(new SampleLoader(memory.classes), memory.classes.keySet());
        } catch (ReflectiveOperationException | LinkageError e) {
            return new Outcome("error", String.valueOf(e), false);
        }
        if (main == null) {
            return new Outcome("compile_error", "no public static void main(String[])", false);
        }
        return runMain(main);
    }

    private static Method findMain(ClassLoader loader, Iterable<String> names)
            throws ReflectiveOperationException {
        List<String> order = new ArrayList<>();
        order.add("Main");
        names.forEach(order::add);
        for (String name : order) {
            Class<?> c;
            try {
                c = Class.forName(name, false, loader);
            } catch (ClassNotFoundException e) {
                continue;
            }
            for (Method method : c.getDeclaredMethods()) {
                if (method.getName().equals("main") && Modifier.isStatic(method.getModifiers())
                        && method.getParameterCount() == 1
                        && method.getParameterTypes()[0] == String[].class) {
                    method.setAccessible(true);
                    return method;
                }
            }
        }
        return null;
    }

    private Outcome runMain(Method main) {
        Throwable[] thrown = new Throwable[1];
        ThreadGroup group = new ThreadGroup("sample");
        Thread thread = new Thread(group, () -> {
            try {
                main.invoke(null, (Object) new String[0]);
            } catch (InvocationTargetException e) {
                thrown[0] = e.getCause();
            } catch (Throwable e) {
                thrown[0] = e;
            }
        }, "sample", 256L << 20);
        thread.setDaemon(true);
        thread.start();
        try {
            thread.join(timeoutMillis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (thread.isAlive()) {
            return new Outcome("timeout", "no result after " + timeoutMillis + " ms", true);
        }
        boolean leftovers = group.activeCount() > 0;
        Throwable t = thrown[0];
        if (t == null) {
            return new Outcome("passed", "", leftovers);
        }
        String status = t instanceof AssertionError ? "failed" : "error";
        return new Outcome(status, t.toString(), leftovers);
    }
}
